"""The tamper matrix: every way a pulled tree can lie fails `rgt verify` naming the path, and `rgt down` refuses (4)."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from tests.fake_providers import make_run, register, run_cli, torch_bytes

RUN = "tamper1"


@pytest.fixture
def pulled(tmp_path, monkeypatch, capsys):
    """A finished run on a local box, pulled and verified into ./rgt-pulls/RUN."""
    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    box = tmp_path / "box"
    paths = make_run(box, RUN, {"out/a.bin": os.urandom(5000), "out/metrics.json": b'{"acc": 0.9}'},
                     {"step_1.pt": torch_bytes(1), "step_2.pt": torch_bytes(2)})
    register(tmp_path / "state", box, RUN)
    code, _out, err = run_cli(capsys, "pull", RUN)
    assert code == 0, err
    dest = tmp_path / "rgt-pulls" / RUN
    assert (dest / "PULL_VERIFIED.json").exists()
    return dest, paths


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    st = p.stat()
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the hash can tell


def _edit_manifest(dest: Path, fn) -> None:
    doc = json.loads((dest / "manifest.json").read_text())
    fn(doc)
    (dest / "manifest.json").write_text(json.dumps(doc))


def _symlink(dest: Path) -> None:
    target = dest.parent / "elsewhere.bin"
    shutil.copy(dest / "code/out/a.bin", target)
    (dest / "code/out/a.bin").unlink()
    os.symlink(target, dest / "code/out/a.bin")


TAMPERS = {
    "flipped_byte": (lambda d: _flip(d / "code/out/a.bin"), "code/out/a.bin"),
    "missing_file": (lambda d: (d / "code/out/metrics.json").unlink(), "code/out/metrics.json"),
    "extra_stale_file": (lambda d: (d / "code/out/old_run.bin").write_bytes(b"stale"), "code/out/old_run.bin"),
    "truncated_checkpoint": (lambda d: os.truncate(d / "ckpt/step_2.pt", 100), "ckpt/step_2.pt"),
    "symlink": (_symlink, "code/out/a.bin"),
    "dotdot_entry": (lambda d: _edit_manifest(d, lambda m: m["entries"].append(
        {"path": "../evil.txt", "size_bytes": 1, "sha256": "0" * 64, "kind": "artifact", "pruned": False})),
        "../evil.txt"),
    "empty_roster": (lambda d: _edit_manifest(d, lambda m: m.update(entries=[])), "manifest.json"),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tampered_pull_fails_verify_by_path_and_down_refuses(pulled, capsys, name):
    dest, _paths = pulled
    tamper, path = TAMPERS[name]
    tamper(dest)
    code, out, err = run_cli(capsys, "verify", str(dest))
    assert code == 1, (out, err)
    assert path in out, out
    assert "verification failed" in err
    assert not (dest / "PULL_VERIFIED.json").exists()
    code, out, err = run_cli(capsys, "down", RUN, "--confirm", RUN)
    assert code == 4, (out, err)


def test_down_refuses_a_tampered_tree_even_while_the_old_record_is_still_there(pulled, capsys):
    dest, _paths = pulled
    _flip(dest / "ckpt/step_1.pt")
    code, _out, err = run_cli(capsys, "down", RUN, "--confirm", RUN)
    assert code == 4
    assert "ckpt/step_1.pt" in err and "changed since it was verified" in err


def test_pull_again_repairs_a_flipped_byte(pulled, capsys):
    dest, paths = pulled
    _flip(dest / "code/out/a.bin")
    code, _out, err = run_cli(capsys, "pull", RUN)
    assert code == 0, err
    assert "sending them again" in err
    assert (dest / "code/out/a.bin").read_bytes() == Path(paths.code, "out/a.bin").read_bytes()


def test_checkpoint_with_nan_fails_verification(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "box", "nan1", {"out/a.bin": b"a"}, {"step_1.pt": torch_bytes(1, nan=True)})
    register(tmp_path / "state", tmp_path / "box", "nan1")
    code, _out, err = run_cli(capsys, "pull", "nan1")
    assert code == 1
    assert "ckpt/step_1.pt: 1 tensor(s) hold NaN or inf: model.w" in err
    assert not (tmp_path / "rgt-pulls/nan1/PULL_VERIFIED.json").exists()


def test_checkpoint_that_needs_unpickling_is_covered_by_hash_and_structure_never_unpickled(tmp_path, monkeypatch,
                                                                                       capsys):
    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "box", "pk1", {"out/a.bin": b"a"}, {"step_1.pt": torch_bytes(1, pickle_only=True)})
    register(tmp_path / "state", tmp_path / "box", "pk1")
    code, _out, err = run_cli(capsys, "pull", "pk1")
    assert code == 0, err
    assert "1 checked by hash and zip structure only" in err and "loaded with weights_only" not in err
    record = json.loads((tmp_path / "rgt-pulls/pk1/PULL_VERIFIED.json").read_text())
    assert record["checked"] == {"structure": 1} and "allow_pickle" not in record
    code, out, err = run_cli(capsys, "verify", str(tmp_path / "rgt-pulls/pk1"), "--allow-pickle")
    assert code == 2 and "rgt up --allow-pickle" in err and len(err.strip().splitlines()) == 1, err


def _safetensors(values, truncate_by: int = 0) -> bytes:
    import torch

    t = torch.tensor(values, dtype=torch.float32)
    raw = bytes(t.untyped_storage())
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(raw)]}}).encode()
    data = struct.pack("<Q", len(header)) + header + raw
    return data[: len(data) - truncate_by]


@pytest.mark.parametrize(("values", "cut", "problem"), [
    ([1.0, 2.0], 0, None),
    ([1.0, float("inf")], 0, "NaN or inf: w"),
    ([1.0, 2.0, 3.0], 4, "past the end"),
])
def test_safetensors_checkpoints_are_checked(tmp_path, monkeypatch, capsys, values, cut, problem):
    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "box", "st1", {"out/a.bin": b"a"}, {"model.safetensors": _safetensors(values, cut)})
    register(tmp_path / "state", tmp_path / "box", "st1")
    code, _out, err = run_cli(capsys, "pull", "st1")
    if problem is None:
        assert code == 0, err
        assert "1 safetensors parsed" in err
    else:
        assert code == 1
        assert "ckpt/model.safetensors" in err and problem in err
