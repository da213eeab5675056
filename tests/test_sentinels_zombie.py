"""Zombie VRAM: memory NVML attributes to no process, /proc fd evidence; reap candidates spare our own."""

from __future__ import annotations

import os
import subprocess
import sys

import pynvml

from rgt.agent.nvml import Nvml
from rgt.agent.sentinels.zombie import ZombieVramSentinel, device_holders, reap_candidates
from tests.conftest import wait_until
from tests.test_nvml import GIB, FakeNvml

HZ = os.sysconf("SC_CLK_TCK")
BOOT = 1_700_000_000


def _proc_tree(root, procs):
    """procs: {pid: (ppid, started_unix, [fd targets], cmdline)}; a fixture /proc."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "stat"), "w") as f:
        f.write(f"cpu 1 2 3\nbtime {BOOT}\n")
    for pid, (ppid, started, fds, cmd) in procs.items():
        d = os.path.join(root, str(pid))
        os.makedirs(os.path.join(d, "fd"))
        ticks = int((started - BOOT) * HZ)
        fields = ["S", str(ppid), str(pid), str(pid)] + ["0"] * 15 + [str(ticks)] + ["0"] * 30
        with open(os.path.join(d, "stat"), "w") as f:
            f.write(f"{pid} (py thon) " + " ".join(fields) + "\n")
        with open(os.path.join(d, "cmdline"), "wb") as f:
            f.write(cmd.replace(" ", "\0").encode())
        for n, target in enumerate(fds):
            os.symlink(target, os.path.join(d, "fd", str(n + 3)))
    return str(root)


NOW = BOOT + 10_000
PROCS = {
    1: (0, BOOT + 1, [], "init"),
    100: (1, BOOT + 50, ["/dev/null"], "python3 agent.pyz daemon"),
    200: (100, BOOT + 60, ["/dev/nvidia0", "/dev/nvidiactl"], "python train.py"),
    201: (200, BOOT + 61, ["/dev/nvidia0"], "python train.py worker"),
    300: (1, BOOT + 70, ["/dev/nvidia0", "/dev/nvidiactl", "pipe:[123]"], "python old_run.py"),
    400: (1, NOW - 30, ["/dev/nvidia-uvm"], "python just_started.py"),
    500: (1, BOOT + 80, ["/var/log/x"], "bash"),
}


def test_device_holders_reads_fd_links(tmp_path):
    proc = _proc_tree(tmp_path / "proc", PROCS)
    holders, unreadable = device_holders(proc)
    assert sorted(holders) == [200, 201, 300, 400]
    assert holders[300] == ["/dev/nvidia0", "/dev/nvidiactl"]
    assert unreadable == 0


def test_reap_candidates_are_proven_holders_minus_agent_tracked_trees_and_young(tmp_path):
    proc = _proc_tree(tmp_path / "proc", PROCS)
    found = reap_candidates(proc, own_pid=100, tracked_pids={200}, now=NOW)
    assert [c["pid"] for c in found] == [300]
    assert found[0]["start_time"] == BOOT + 70
    assert found[0]["cmdline"] == "python old_run.py"
    assert found[0]["devices"] == ["/dev/nvidia0", "/dev/nvidiactl"]
    # the trainer's tree is protected through the agent too, and NVML-listed users can be excluded
    assert [c["pid"] for c in reap_candidates(proc, own_pid=100, now=NOW)] == [300]
    assert reap_candidates(proc, own_pid=100, exclude_pids=lambda: [300], now=NOW) == []
    assert [c["pid"] for c in reap_candidates(proc, own_pid=100, min_age_s=0, now=NOW)] == [300, 400]


def test_reap_candidates_on_the_real_proc(tmp_path):
    device = tmp_path / "nvidia0"
    device.write_bytes(b"")
    holder = subprocess.Popen([sys.executable, "-c",
                               f"f = open({str(device)!r}); print('open', flush=True); input()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        prefix = str(tmp_path / "nvidia")
        found = reap_candidates(own_pid=-1, min_age_s=0, device_prefix=prefix)
        assert [c["pid"] for c in found] == [holder.pid]
        assert found[0]["devices"] == [str(device)]
        assert reap_candidates(own_pid=-1, tracked_pids=[holder.pid], min_age_s=0, device_prefix=prefix) == []
        # a child of the agent itself is never a candidate
        assert reap_candidates(own_pid=os.getpid(), min_age_s=0, device_prefix=prefix) == []
        assert reap_candidates(own_pid=-1, min_age_s=3600, device_prefix=prefix) == []
    finally:
        holder.kill()
        holder.wait()
    wait_until(lambda: not reap_candidates(own_pid=-1, min_age_s=0, device_prefix=str(tmp_path / "nvidia")),
               5, what="holder gone")


def _sentinel(tmp_path, procs, gpu=None, **kwargs):
    lib = FakeNvml([dict({"used": 10 * GIB, "procs": []}, **(gpu or {}))])
    proc = _proc_tree(tmp_path / "proc", procs)
    return lib, ZombieVramSentinel(Nvml(lib), proc, own_pid=100, **kwargs)


def test_unattributed_vram_held_over_120_s_by_a_stranger_warns(tmp_path):
    _, sentinel = _sentinel(tmp_path, PROCS, own_pids=lambda: [200])
    assert sentinel.check(0.0)[0].level == "ok"
    assert sentinel.check(90.0)[0].level == "ok"
    (alert,) = sentinel.check(121.0)
    assert (alert.level, alert.code) == ("warn", "zombie_vram")
    assert sorted(alert.data["holders"]) == [300, 400]
    assert alert.data["own_holders"] == [200, 201]
    assert "pid 300 (python old_run.py)" in alert.message
    assert alert.data["unattributed_bytes"] == {0: 10 * GIB}


def test_vram_held_only_by_our_own_trainer_is_not_a_zombie(tmp_path):
    ours = {k: v for k, v in PROCS.items() if k in (1, 100, 200, 201)}
    _, sentinel = _sentinel(tmp_path, ours, own_pids=[200])
    sentinel.check(0.0)
    (alert,) = sentinel.check(200.0)
    assert alert.level == "ok"
    assert "PID namespace" in alert.message


def test_vram_with_no_visible_holder_warns(tmp_path):
    nobody = {k: v for k, v in PROCS.items() if k in (1, 100, 500)}
    _, sentinel = _sentinel(tmp_path, nobody)
    sentinel.check(0.0)
    (alert,) = sentinel.check(200.0)
    assert (alert.level, alert.code) == ("warn", "zombie_vram")
    assert "no holder visible" in alert.message


def test_attributed_vram_or_a_short_spike_is_fine(tmp_path):
    lib, sentinel = _sentinel(tmp_path, PROCS, gpu={"procs": [(12345, 10 * GIB)]})
    sentinel.check(0.0)
    assert sentinel.check(500.0)[0].level == "ok"
    lib.gpus[0]["procs"] = []
    sentinel.check(600.0)
    lib.gpus[0]["procs"] = [(12345, 10 * GIB)]
    sentinel.check(650.0)  # the excess went away: the 120 s hold starts over
    lib.gpus[0]["procs"] = []
    assert sentinel.check(700.0)[0].level == "ok"


def test_no_process_list_means_no_claim(tmp_path):
    _, sentinel = _sentinel(tmp_path, PROCS, gpu={"procs": ("raise", pynvml.NVML_ERROR_NOT_SUPPORTED)})
    sentinel.check(0.0)
    assert sentinel.check(500.0)[0].level == "ok"


def test_no_driver_reports_nothing(tmp_path):
    lib = FakeNvml([{}], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    sentinel = ZombieVramSentinel(Nvml(lib), str(tmp_path))
    assert sentinel.check(0.0) == []
