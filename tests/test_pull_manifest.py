"""The box-side manifest (agent/manifest.py): an explicit roster, refusals by name, a hash that moves with content."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from rgt.agent import manifest as agent_manifest
from rgt.shared.manifest import ManifestError
from tests.conftest import require_real, scaled
from tests.fake_providers import add_checkpoint, ckpt_record, finish, make_run, torch_bytes, write_index
from tests.helpers import python_versions


def entries(m):
    return {e.path: (e.kind, e.pruned) for e in m.entries}


def test_final_manifest_lists_artifacts_checkpoints_logs_metrics_and_marker(tmp_path):
    paths = make_run(tmp_path, "r1", {"out/a.bin": b"a" * 10, "out/sub/b.txt": b"b"}, {"step_1.pt": torch_bytes(1)},
                     globs=["out/*"])
    m, final = agent_manifest.build(paths)
    assert final
    assert entries(m) == {
        "code/out/a.bin": ("artifact", False), "code/out/sub/b.txt": ("artifact", False),
        "ckpt/step_1.pt": ("checkpoint", False), "logs/trainer.log": ("log", False),
        "spec.json": ("metrics", False), "exit.json": ("metrics", False), "DONE": ("marker", False),
    }
    assert Path(paths.manifest).read_bytes() == m.to_json()


def test_rebuild_without_change_keeps_the_manifest_hash(tmp_path):
    paths = make_run(tmp_path, "r1", {"out/a.bin": b"a"}, {"step_1.pt": torch_bytes(1)})
    first, _ = agent_manifest.build(paths)
    again, _ = agent_manifest.build(paths)
    assert again.sha256 == first.sha256


def test_new_checkpoint_on_the_box_changes_the_manifest_hash(tmp_path):
    paths = make_run(tmp_path, "r1", {"out/a.bin": b"a"}, {"step_1.pt": torch_bytes(1)})
    first, _ = agent_manifest.build(paths)
    recs = [ckpt_record(paths, "ckpt/step_1.pt"), add_checkpoint(paths, "step_2.pt", torch_bytes(2))]
    write_index(paths, recs)
    second, _ = agent_manifest.build(paths)
    assert second.sha256 != first.sha256
    assert "ckpt/step_2.pt" in entries(second)


def test_empty_roster_is_refused_never_zero_failed(tmp_path):
    paths = make_run(tmp_path, "r1", {}, {}, globs=["out/*"])
    with pytest.raises(ManifestError, match="nothing to pull"):
        agent_manifest.build(paths)
    assert not os.path.exists(paths.manifest)


def test_symlinked_artifact_is_refused_by_name(tmp_path):
    paths = make_run(tmp_path, "r1", {"out/real.bin": b"x"})
    os.symlink("real.bin", os.path.join(paths.code, "out", "link.bin"))
    with pytest.raises(ManifestError, match=r"code/out/link\.bin.*symlink"):
        agent_manifest.build(paths)


def test_symlinked_directory_on_the_way_is_refused(tmp_path):
    paths = make_run(tmp_path, "r1", {"out/real.bin": b"x"}, globs=["elsewhere/*"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s")
    os.symlink(str(outside), os.path.join(paths.code, "elsewhere"))
    with pytest.raises(ManifestError, match="symlink"):
        agent_manifest.build(paths)


@pytest.mark.parametrize("pattern", ["../secrets.env", "/etc/*", "out/../../spec.json"])
def test_artifact_glob_leaving_the_code_dir_is_refused(tmp_path, pattern):
    paths = make_run(tmp_path, "r1", {"out/a.bin": b"a"}, globs=[pattern])
    Path(paths.secrets).write_text("TOKEN=x\n")
    with pytest.raises(ManifestError, match="inside the run's code/ dir"):
        agent_manifest.build(paths)


def test_mid_run_manifest_holds_only_verified_checkpoints_and_spec(tmp_path):
    paths = make_run(tmp_path, "r1", {"out/a.bin": b"a"}, {"step_1.pt": torch_bytes(1)}, marker=None)
    recs = [ckpt_record(paths, "ckpt/step_1.pt"), add_checkpoint(paths, "step_2.pt", torch_bytes(2), "pending")]
    write_index(paths, recs)
    m, final = agent_manifest.build(paths)
    assert not final
    assert entries(m) == {"ckpt/step_1.pt": ("checkpoint", False), "spec.json": ("metrics", False)}


def test_pruned_checkpoint_stays_as_a_pruned_entry_with_its_hash(tmp_path):
    paths = make_run(tmp_path, "r1", {"out/a.bin": b"a"}, {"step_1.pt": torch_bytes(1), "step_2.pt": torch_bytes(2)})
    old = ckpt_record(paths, "ckpt/step_1.pt")
    os.unlink(os.path.join(paths.root, "ckpt/step_1.pt"))
    write_index(paths, [dict(old, pruned=True), ckpt_record(paths, "ckpt/step_2.pt")])
    m, _ = agent_manifest.build(paths)
    pruned = {e.path: e for e in m.entries if e.pruned}
    assert set(pruned) == {"ckpt/step_1.pt"}
    assert pruned["ckpt/step_1.pt"].sha256 == old["sha256"]


def test_published_file_that_vanishes_stays_as_pruned(tmp_path):
    paths = make_run(tmp_path, "r1", {"out/a.bin": b"a", "out/b.bin": b"b"})
    first, _ = agent_manifest.build(paths)
    os.unlink(os.path.join(paths.code, "out", "b.bin"))
    second, _ = agent_manifest.build(paths)
    gone = [e for e in second.entries if e.path == "code/out/b.bin"]
    assert gone and gone[0].pruned
    assert gone[0].sha256 == next(e.sha256 for e in first.entries if e.path == "code/out/b.bin")


def test_unindexed_checkpoint_is_in_the_final_manifest(tmp_path):
    paths = make_run(tmp_path, "r1", {"out/a.bin": b"a"})
    Path(paths.root, "ckpt").mkdir(exist_ok=True)
    Path(paths.root, "ckpt", "last.pt").write_bytes(torch_bytes(3))
    Path(paths.root, "ckpt", ".last.pt.123.rgt.tmp").write_bytes(b"partial")
    m, _ = agent_manifest.build(paths)
    assert entries(m)["ckpt/last.pt"] == ("checkpoint", False)
    assert not any(".tmp" in p for p in entries(m))


def test_corrupt_checkpoint_is_left_out_with_a_note(tmp_path, capsys):
    paths = make_run(tmp_path, "r1", {"out/a.bin": b"a"}, {"step_1.pt": torch_bytes(1)})
    bad = add_checkpoint(paths, "step_2.pt", b"garbage", "corrupt")
    write_index(paths, [ckpt_record(paths, "ckpt/step_1.pt"), bad])
    m, _ = agent_manifest.build(paths)
    assert "ckpt/step_2.pt" not in entries(m)
    assert "step_2.pt is not in the manifest: it is corrupt" in capsys.readouterr().err


def test_a_changed_checkpoint_is_hashed_again_not_trusted_from_the_index(tmp_path):
    paths = make_run(tmp_path, "r1", {"out/a.bin": b"a"}, {"step_1.pt": torch_bytes(1)})
    full = Path(paths.root, "ckpt", "step_1.pt")
    full.write_bytes(torch_bytes(9))  # rewritten after the pipeline hashed it: new mtime and size
    m, _ = agent_manifest.build(paths)
    want = hashlib.sha256(full.read_bytes()).hexdigest()
    assert next(e.sha256 for e in m.entries if e.path == "ckpt/step_1.pt") == want


def test_manifest_command_runs_from_the_archive_under_python_3_8(tmp_path):
    py = python_versions().get("3.8")
    require_real(py is not None, "no CPython 3.8 under ~/.pyenv")
    from rgt.controller import pyz

    archive, _ = pyz.build(str(tmp_path / "pyz"))
    paths = make_run(tmp_path / "box", "r1", {"out/a.bin": b"a"})
    finish(paths)
    p = subprocess.run([py, "-I", archive, "manifest", paths.root], capture_output=True, text=True, timeout=scaled(60))
    assert p.returncode == 0, p.stderr
    sha, count, kind = p.stdout.split()
    assert kind == "final" and int(count) >= 4
    assert json.loads(Path(paths.manifest).read_text())["run_id"] == "r1"


def test_directory_checkpoint_lists_its_files_and_keeps_them_when_pruned(tmp_path):
    paths = make_run(tmp_path, "r1", {"out/a.bin": b"a"})
    top = Path(paths.root, "ckpt", "checkpoint-10")
    top.mkdir(parents=True)
    files = {"config.json": b"{}", "model.pt": torch_bytes(10)}
    for name, data in files.items():
        (top / name).write_bytes(data)
    rec = {"key": "checkpoint-10", "path": "ckpt/checkpoint-10", "is_dir": True, "state": "verified",
           "pruned": False, "quarantined": None, "missing": False, "sidecar": None, "size_bytes": 0,
           "sha256": "x", "files": [{"rel": n, "size_bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                    for n, d in files.items()]}
    write_index(paths, [rec])
    m, _ = agent_manifest.build(paths)
    assert entries(m)["ckpt/checkpoint-10/model.pt"] == ("checkpoint", False)
    assert entries(m)["ckpt/checkpoint-10/config.json"] == ("checkpoint", False)
    for name in files:
        (top / name).unlink()
    top.rmdir()
    write_index(paths, [dict(rec, pruned=True)])
    m, _ = agent_manifest.build(paths)
    assert entries(m)["ckpt/checkpoint-10/model.pt"] == ("checkpoint", True)


def test_an_unindexed_checkpoint_in_a_subdirectory_is_in_the_final_manifest(tmp_path):
    from rgt.agent import manifest as agent_manifest
    from rgt.shared.paths import RunPaths
    from tests.helpers import make_run_dir

    run = make_run_dir(tmp_path, "sub1", ["true"])
    (run / "ckpt" / "stage1").mkdir(parents=True)
    (run / "ckpt" / "stage1" / "step_5.pt").write_bytes(b"weights")
    (run / "DONE").write_text("{}")
    m, final = agent_manifest.build(RunPaths(str(run)))
    assert final
    assert "ckpt/stage1/step_5.pt" in {e.path for e in m.entries}
