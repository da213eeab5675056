"""The agent archive is checked on the box before it runs; rsync dies with rgt; a full laptop disk is named.

Real sshd, real rsync -e ssh, real tmpfs for the full disk.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from rgt.controller import pyz
from rgt.controller.transport.ssh import SSHTransport
from tests.conftest import scaled, wait_until
from tests.hostile_box import HostileBox
from tests.sshbox import RGT

pytest_plugins = ["tests.conftest_ssh"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _corrupt(archive: Path, how: str, box: HostileBox) -> None:
    st = archive.stat()
    if how == "truncated":
        os.truncate(archive, st.st_size // 2)  # an upload cut short, a full box disk
    else:  # replaced: the same size and mtime, other bytes (rsync's quick check would miss it)
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0xFF
        archive.write_bytes(bytes(data))
        os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns))
    box.own()


@pytest.mark.parametrize("how", ["truncated", "replaced"])
def test_a_bad_archive_on_the_box_is_replaced_before_the_agent_runs(sshbox, rgt, tmp_path, monkeypatch, how):
    box = HostileBox(sshbox, rgt.state, f"arch-{how}")
    try:
        res = rgt("pull", box.run_id, cwd=str(tmp_path))  # first use: the archive is sent
        assert res.returncode == 0, res.stderr
        archive = box.archive()
        good = _sha(archive)
        assert archive.name == f"{good[:12]}.pyz"
        _corrupt(archive, how, box)
        res = rgt("pull", box.run_id, cwd=str(tmp_path))
        assert res.returncode == 0, res.stderr
        assert _sha(archive) == good
        # The detached start (rgt up, rgt resume) checks it in the same round trip that starts the agent.
        _corrupt(archive, how, box)
        monkeypatch.setenv("RGT_STATE_DIR", rgt.state)
        t = SSHTransport(sshbox.alias, ssh_config=str(sshbox.ssh_config), root=str(box.root), state=Path(rgt.state))
        assert t.start_agent(str(box.run_dir), sshbox.python, str(archive)) > 0
        assert _sha(archive) == good
        out = box.run_dir / "logs" / "agent.out"
        text = out.read_text(errors="replace") if out.exists() else ""
        assert "__main__" not in text and "zipimport" not in text and "SyntaxError" not in text, text
        assert not list(archive.parent.glob("*.rgt-up-*"))  # the upload's temp name was renamed over it
    finally:
        box.close()


def _rsyncs_of(pid: int) -> list:
    try:
        return [c for c in psutil.Process(pid).children(recursive=True) if c.name() == "rsync"]
    except psutil.Error:
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _box_rsyncs(sshbox) -> list:
    return [q for q in sshbox.box_processes() if q.name() == "rsync"]


def _tree_bytes(dest: Path) -> int:
    return sum(x.stat().st_size for x in dest.rglob("*") if x.is_file()) if dest.exists() else 0


def test_kill_9_of_rgt_pull_leaves_no_rsync_behind(sshbox, rgt, tmp_path):
    blob = os.urandom(8 << 20)
    box = HostileBox(sshbox, rgt.state, "kill9", artifacts={f"out/part{i}.bin": bytes([i]) + blob for i in range(4)})
    env = dict(sshbox.env(rgt.state), RGT_RSYNC_BWLIMIT="512")  # KiB/s: a minute of transfer at least
    dest = tmp_path / "rgt-pulls" / box.run_id
    p = subprocess.Popen([RGT, "pull", box.run_id], env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        # The box stalls its side (as a stranger's box may): the laptop's rsync then waits on the network,
        # writes nothing, and so would never notice a dead parent through a broken pipe.
        procs = wait_until(lambda: [x for x in _rsyncs_of(p.pid) if any("--files-from" in a for a in x.cmdline())],
                           timeout_s=120, interval_s=0.01, what="the pull's rsync under rgt pull")
        for q in wait_until(lambda: _box_rsyncs(sshbox), timeout_s=60, interval_s=0.01, what="the box's rsync"):
            q.send_signal(signal.SIGSTOP)
        seen: list = []

        def settled() -> bool:  # what was in flight when the box stalled has landed
            seen.append(_tree_bytes(dest))
            return len(seen) >= 4 and len(set(seen[-4:])) == 1

        wait_until(settled, timeout_s=60, interval_s=0.25, what="the stalled transfer to settle")
        procs = _rsyncs_of(p.pid) or procs
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        wait_until(lambda: not any(_alive(x) for x in procs), timeout_s=2.0, interval_s=0.02,
                   what="every rsync of the killed pull to be gone")
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(30)
        box.close()


def test_a_full_laptop_disk_is_named(sshbox, rgt, tmpfs, tmp_path):
    small = tmpfs("small", "size=1m")
    box = HostileBox(sshbox, rgt.state, "diskfull", artifacts={"out/big.bin": os.urandom(3 << 20)})
    try:
        dest = os.path.join(small, "pull")
        env = dict(sshbox.env(rgt.state), RGT_PULL_ATTEMPTS="1")
        res = subprocess.run([RGT, "pull", box.run_id, "--dest", dest], env=env, cwd=str(tmp_path),
                             capture_output=True, text=True, timeout=scaled(120))
        assert res.returncode == 1, res.stderr
        lines = [x for x in res.stderr.splitlines() if x.strip() and not x.startswith("pull ")]
        assert lines[-1] == (f"rgt: no space left on this machine's disk ({dest}): free some space, then run "
                             f"`rgt pull {box.run_id}` again; what arrived is kept in .rgt-partial/"), res.stderr
        assert "Traceback" not in res.stderr
    finally:
        box.close()


def test_guard_refuses_a_wrong_hash_without_running_anything(tmp_path):
    import sys

    archive = tmp_path / "x.pyz"
    marker = tmp_path / "RAN"
    archive.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    p = subprocess.run([*pyz.guarded_argv(sys.executable, str(archive), "0" * 64), "daemon"], capture_output=True,
                       timeout=60)
    assert pyz.mismatched(p.returncode, p.stderr) and not marker.exists()
    p = subprocess.run([*pyz.guarded_argv(sys.executable, str(archive), _sha(archive)), "daemon"],
                       capture_output=True, timeout=60)
    assert p.returncode == 0 and marker.exists()  # the right hash runs it, with its own argv
