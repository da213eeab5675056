"""Interrupted pulls: what arrived stays in rsync's partial dir; the next pull sends only the rest and verifies."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess

import pytest

from tests.conftest import scaled, wait_until
from tests.fake_providers import make_run, register, run_cli
from tests.helpers import RGT, local_bytes, pull_rsync_of

pytestmark = pytest.mark.slow


def _sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _start_pull(tmp_path, run_id, bwlimit_kbps):
    env = dict(os.environ, RGT_STATE_DIR=str(tmp_path / "state"), RGT_RSYNC_BWLIMIT=str(bwlimit_kbps),
               RGT_PULL_BACKOFF_S="0.1")
    return subprocess.Popen([RGT, "pull", run_id], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_pull_interrupted_at_half_resumes_and_verifies_exactly(tmp_path, monkeypatch, capsys):
    files = {f"out/part{i}.bin": os.urandom(50 << 20) for i in range(4)}
    total = sum(len(v) for v in files.values())
    paths = make_run(tmp_path / "box", "big1", files)
    del files
    register(tmp_path / "state", tmp_path / "box", "big1")
    dest = tmp_path / "rgt-pulls" / "big1"
    proc = _start_pull(tmp_path, "big1", 25000)
    rsync = wait_until(lambda: pull_rsync_of(proc.pid), 120, what="rsync to start")
    wait_until(lambda: local_bytes(dest) >= total // 2, 120, what="half of the bytes to arrive")
    rsync.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=scaled(120))
    assert proc.returncode == 1, err
    assert "again to resume" in err
    assert not (dest / "PULL_VERIFIED.json").exists()
    kept = local_bytes(dest) - (dest / "manifest.json").stat().st_size
    assert kept >= total // 2

    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    code, _out, err = run_cli(capsys, "pull", "big1")
    assert code == 0, err
    moved = int(err.split("rsync moved ")[1].split("(")[1].split(" bytes")[0])
    assert moved < total - kept + total // 20, f"re-sent {moved} for {total - kept} remaining"
    for i in range(4):
        rel = f"code/out/part{i}.bin"
        assert _sha(dest / rel) == _sha(os.path.join(paths.root, rel))
    assert (dest / "PULL_VERIFIED.json").exists()
    assert not any(".rgt-partial" in r for r, _d, _n in os.walk(dest))


def test_pull_retries_by_itself_when_the_far_side_dies(tmp_path):
    make_run(tmp_path / "box", "drop1", {f"out/p{i}.bin": os.urandom(20 << 20) for i in range(3)})
    register(tmp_path / "state", tmp_path / "box", "drop1")
    dest = tmp_path / "rgt-pulls" / "drop1"
    proc = _start_pull(tmp_path, "drop1", 20000)
    top = wait_until(lambda: pull_rsync_of(proc.pid), 120, what="rsync to start")
    wait_until(lambda: local_bytes(dest) >= 15 << 20, 120, what="some bytes to arrive")
    for child in top.children(recursive=True):  # the receiving side vanishes, as with a dropped link
        child.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=scaled(180))
    assert proc.returncode == 0, err
    assert "retry 1/" in err
    assert "every file was hashed again" in err
    assert (dest / "PULL_VERIFIED.json").exists()
