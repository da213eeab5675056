"""pull, verify and down over a real sshd on 127.0.0.1: the same gate through the SSH transport and rsync -e ssh."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.conftest import require_real, scaled, wait_until
from tests.helpers import local_bytes, pull_rsync_of
from tests.sshbox import RGT

pytest_plugins = ["tests.conftest_ssh"]

TRAINER = """\
import os
os.makedirs("out", exist_ok=True)
with open("out/weights.bin", "wb") as f:
    f.write(os.urandom(3 << 20))
print("step=1 loss=0.5", flush=True)
"""


BIG_TRAINER = """\
import os
os.makedirs("out", exist_ok=True)
for i in range(3):
    with open(f"out/part{i}.bin", "wb") as f:
        f.write(os.urandom(16 << 20))
"""


@pytest.fixture
def code_dir():
    path = tempfile.mkdtemp(prefix="rgt-code-")
    Path(path, "train.py").write_text(TRAINER)
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


def _nft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nft", *args], capture_output=True, text=True, check=False)





    return None


def test_pull_verify_and_down_over_ssh(rgt, sshbox, code_dir, tmp_path):
    res = rgt("up", sshbox.alias, "--run", "sshpull1", "--tick-s", "0.5", "--code", code_dir,
              "--artifacts", "out/*", "--", "python", "train.py")
    assert res.returncode == 0, res.stderr
    assert rgt("wait", "sshpull1", timeout_s=120).returncode == 0
    res = rgt("down", "sshpull1", "--confirm", "sshpull1", cwd=str(tmp_path))
    assert res.returncode == 4, res.stderr
    res = rgt("pull", "sshpull1", cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "rgt-pulls" / "sshpull1"
    box_file = Path(sshbox.home, ".rgt", "runs", "sshpull1", "code", "out", "weights.bin")
    assert (dest / "code/out/weights.bin").read_bytes() == box_file.read_bytes()
    assert rgt("verify", str(dest)).returncode == 0
    with open(dest / "logs/trainer.log", "ab") as f:
        f.write(b"edited on the laptop\n")
    assert rgt("down", "sshpull1", "--confirm", "sshpull1", cwd=str(tmp_path)).returncode == 4
    assert rgt("pull", "sshpull1", cwd=str(tmp_path)).returncode == 0
    res = rgt("down", "sshpull1", "--confirm", "sshpull1", cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "safe to destroy" in res.stderr
    assert os.path.exists(box_file)  # generic SSH: rgt says what to do, it deletes nothing itself


@pytest.mark.slow
def test_pull_survives_a_link_dropped_mid_transfer(rgt, sshbox, code_dir, tmp_path):
    """A dropped link (nftables on the box port) mid-transfer: rsync --timeout ends the stall, a retry finishes."""
    require_real(shutil.which("nft") is not None and os.geteuid() == 0, "nftables as root, to drop the link")
    table = f"rgt_pull_test_{os.getpid()}"
    probe = _nft("add", "table", "inet", table)
    require_real(probe.returncode == 0, f"nft cannot add a table here: {probe.stderr.strip()}")
    _nft("delete", "table", "inet", table)
    Path(code_dir, "train.py").write_text(BIG_TRAINER)
    res = rgt("up", sshbox.alias, "--run", "sshdrop1", "--tick-s", "0.5", "--code", code_dir,
              "--artifacts", "out/*", "--", "python", "train.py")
    assert res.returncode == 0, res.stderr
    assert rgt("wait", "sshdrop1", timeout_s=120).returncode == 0
    env = dict(sshbox.env(rgt.state), RGT_RSYNC_BWLIMIT="6000", RGT_RSYNC_TIMEOUT_S="3", RGT_PULL_BACKOFF_S="1",
               RGT_PULL_ATTEMPTS="8")
    proc = subprocess.Popen([RGT, "pull", "sshdrop1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    dest = tmp_path / "rgt-pulls" / "sshdrop1"
    try:
        first = wait_until(lambda: pull_rsync_of(proc.pid), 120, what="rsync to start")
        wait_until(lambda: dest.exists() and local_bytes(dest) > 12 << 20, 120, what="12 MB to arrive")
        _nft("add", "table", "inet", table)
        _nft("add", "chain", "inet", table, "input", "{ type filter hook input priority 0 ; }")
        _nft("add", "rule", "inet", table, "input", "tcp", "dport", str(sshbox.port), "drop")
        wait_until(lambda: not first.is_running() or first.status() == psutil.STATUS_ZOMBIE, 120,
                   what="the stalled rsync to time out")
    finally:
        _nft("delete", "table", "inet", table)
    out, err = proc.communicate(timeout=scaled(300))
    assert proc.returncode == 0, err
    assert "retry 1/" in err and "every file was hashed again" in err
    box = Path(sshbox.home, ".rgt", "runs", "sshdrop1", "code", "out")
    for i in range(3):
        assert (dest / f"code/out/part{i}.bin").read_bytes() == (box / f"part{i}.bin").read_bytes()
