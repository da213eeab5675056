"""A hostile box against the real sshd: forged verification records, unpicklable checkpoints and lying manifests.

The box's python is a shim that serves whatever manifest the test chose; the laptop is the real `rgt`.
Nothing the box sends may run code here (a __reduce__ that writes a marker), unlock the teardown gate, or
end a command with anything but one clean line.
"""

from __future__ import annotations

import io
import json
import shutil
import time

import pytest

from tests.conftest import scaled
from tests.hostile_box import HostileBox

pytest_plugins = ["tests.conftest_ssh"]

RUN = "hostile1"


class Evil:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def evil_checkpoint(marker: str) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(4)}, "extra": Evil(marker)}, buf)
    return buf.getvalue()


@pytest.fixture
def hostile(sshbox, rgt, tmp_path):
    marker = tmp_path / "CODE_RAN"
    box = HostileBox(sshbox, rgt.state, RUN, checkpoints={"evil.pt": evil_checkpoint(str(marker))})
    box.marker = marker
    yield box
    box.close()


def _one_line(res) -> str:
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    assert len(lines) == 1 and lines[0].startswith("rgt: "), res.stderr
    return lines[0]


def test_forged_record_never_unlocks_the_gate_nor_runs_code(hostile, rgt, tmp_path):
    dest = tmp_path / "rgt-pulls" / RUN
    forged = {"schema": "rgt/pull-verified/v2", "run_id": RUN, "manifest_sha256": "0" * 64, "allow_pickle": True,
              "files": 1, "bytes": 1, "checkpoints": 1, "fingerprint": [], "mac": "0" * 64}
    hostile.write("PULL_VERIFIED.json", json.dumps(forged).encode())
    ckpt = hostile.entry("ckpt/evil.pt", "checkpoint")
    # 1. The box's manifest names the record itself: refused before anything is transferred.
    hostile.serve_entries([ckpt, hostile.entry("PULL_VERIFIED.json")])
    res = rgt("pull", RUN, cwd=str(tmp_path))
    assert res.returncode == 1
    assert "reserves" in _one_line(res)
    assert not (dest / "PULL_VERIFIED.json").exists()
    # 2. The record reaches the pull folder anyway (as the old bug let it): its seal fails, it is removed.
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(hostile.run_dir / "PULL_VERIFIED.json", dest / "PULL_VERIFIED.json")
    (dest / "ckpt").mkdir(exist_ok=True)
    shutil.copy(hostile.run_dir / "ckpt/evil.pt", dest / "ckpt/evil.pt")
    m = hostile.serve_entries([ckpt])
    (dest / "manifest.json").write_bytes(m.to_json())
    res = rgt("down", RUN, "--confirm", RUN, cwd=str(tmp_path))
    assert res.returncode == 4, res.stderr
    assert "seal does not match" in res.stderr
    assert not (dest / "PULL_VERIFIED.json").exists()
    assert not hostile.marker.exists()
    # 3. A pull of the unpicklable checkpoint is covered by hash and zip structure, and says so; no code runs.
    shutil.rmtree(dest)
    res = rgt("pull", RUN, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "1 checked by hash and zip structure only" in res.stderr
    assert not hostile.marker.exists()
    # 4. A tree changed after the pull makes the gate re-check it (never unpickling), and refuse.
    with open(dest / "ckpt/evil.pt", "ab") as f:
        f.write(b"\0")
    res = rgt("down", RUN, "--confirm", RUN, cwd=str(tmp_path))
    assert res.returncode == 4, res.stderr
    assert not (dest / "PULL_VERIFIED.json").exists()
    assert not hostile.marker.exists()
    assert rgt("pull", RUN, cwd=str(tmp_path)).returncode == 0
    res = rgt("down", RUN, "--confirm", RUN, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert not hostile.marker.exists()


def _entries(n: int = 1, **over) -> list:
    e = {"path": "out/a.bin", "size_bytes": 100, "sha256": "a" * 64, "kind": "artifact", "pruned": False}
    e.update(over)
    return [e] * n


def _doc(entries, run_id: str = RUN) -> bytes:
    return json.dumps({"schema": "rgt/manifest/v1", "run_id": run_id, "created_at": 1.0, "entries": entries}).encode()


def _million() -> bytes:
    one = '{"path":"f/%d","size_bytes":1,"sha256":"' + "b" * 64 + '","kind":"artifact","pruned":false}'
    body = ",".join(one % i for i in range(1_000_000))
    return (f'{{"schema":"rgt/manifest/v1","run_id":"{RUN}","created_at":1,"entries":[' + body + "]}").encode()


MANIFESTS = {
    "reserved_record": (lambda: _doc(_entries(path="PULL_VERIFIED.json")), "reserves"),
    "reserved_record_other_case": (lambda: _doc(_entries(path="pull_Verified.JSON")), "reserves"),
    "reserved_manifest": (lambda: _doc(_entries(path="manifest.json")), "reserves"),
    "reserved_partial_dir": (lambda: _doc(_entries(path="ckpt/.rgt-partial/x.pt")), "reserves"),
    "dotdot": (lambda: _doc(_entries(path="out/../../../etc/passwd")), "'..'"),
    "absolute": (lambda: _doc(_entries(path="/etc/passwd")), "absolute"),
    "leading_dash": (lambda: _doc(_entries(path="-e.sh")), "starting with '-'"),
    "dash_component": (lambda: _doc(_entries(path="out/--rsh=sh")), "starting with '-'"),
    "osc_in_path": (lambda: _doc(_entries(path="out/a\x1b]0;pwned\x07.bin")), "control character"),
    "c1_csi_in_path": (lambda: _doc(_entries(path="out/a\x9b2J.bin")), "control character"),
    "newline_in_path": (lambda: _doc(_entries(path="out/a\nb")), "control character"),
    "bidi_override": (lambda: _doc(_entries(path="out/evil\u202eexe.pt")), "bidi"),
    "size_1e30": (lambda: _doc(_entries(size_bytes=10 ** 30)), "bad size"),
    "size_negative": (lambda: _doc(_entries(size_bytes=-1)), "bad size"),
    "size_as_text": (lambda: _doc(_entries(size_bytes="100")), "bad size"),
    "size_as_float": (lambda: _doc(_entries(size_bytes=1e30)), "bad size"),
    "sha_as_number": (lambda: _doc(_entries(sha256=5)), "sha256"),
    "kind_as_list": (lambda: _doc(_entries(kind=["artifact"])), "kind"),
    "entries_not_a_list": (lambda: json.dumps({"schema": "rgt/manifest/v1", "run_id": RUN, "entries": 5}).encode(),
                           "entries list"),
    "nested_100k_deep": (lambda: b"[" * 100_000 + b"]" * 100_000, "manifest"),
    "not_utf8": (lambda: b"\xff\xfe\x00garbage", "not JSON"),
    "another_run": (lambda: _doc(_entries(), run_id="someone-else\x1b[2J"), "not 'hostile1'"),
    "a_million_entries": (_million, "MiB"),
}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_lying_manifest_is_refused_in_one_line_within_5_s(hostile, rgt, tmp_path, name):
    make, words = MANIFESTS[name]
    hostile.serve_manifest(make())
    t0 = time.monotonic()
    res = rgt("pull", RUN, cwd=str(tmp_path))
    elapsed = time.monotonic() - t0
    assert res.returncode in (1, 2), res.stderr
    line = _one_line(res)
    assert words in line, line
    assert "\x1b" not in res.stderr and "\x9b" not in res.stderr and "\u202e" not in res.stderr
    assert elapsed < scaled(5.0), f"{name}: {elapsed:.1f}s"
    assert not (tmp_path / "rgt-pulls" / RUN / "PULL_VERIFIED.json").exists()
    res = rgt("down", RUN, "--confirm", RUN, cwd=str(tmp_path))
    assert res.returncode == 4 and "Traceback" not in res.stderr, res.stderr
