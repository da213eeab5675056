"""Memory sentinel: a real cgroup v1 with a real OOM kill, and cgroup v2 / v1 fixture trees."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rgt.agent.sentinels.cgroup import cpu_quota, find_dir
from rgt.agent.sentinels.memory import MemorySentinel, read_memory
from tests.conftest import require_real, scaled, wait_until

MIB = 1 << 20
V1_NO_LIMIT = 9223372036854771712


def _write(root, rel, text):
    path = os.path.join(str(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _fake_proc(root, cgroup_lines, meminfo_kb=None):
    _write(root, "self/cgroup", "".join(line + "\n" for line in cgroup_lines))
    if meminfo_kb is not None:
        total, avail = meminfo_kb
        _write(root, "meminfo", f"MemTotal:  {total} kB\nMemFree:  1 kB\nMemAvailable:  {avail} kB\n")
    return str(root)


# -- a real cgroup v1 ------------------------------------------------------------------------------

def _read(path):
    with open(path) as f:
        return f.read()


def _own_v1_memory_cgroup():
    for line in _read("/proc/self/cgroup").splitlines():
        hid, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return "/sys/fs/cgroup/memory" + path.rstrip("/"), path.rstrip("/")
    return None, None


@pytest.fixture
def v1_child_cgroup(request):
    parent, rel = _own_v1_memory_cgroup()
    usable = parent is not None and os.access(os.path.join(parent, "memory.limit_in_bytes"), os.R_OK)
    require_real(usable and os.access(parent, os.W_OK), "no writable cgroup v1 memory controller")
    name = f"rgt-test-{os.getpid()}-{request.node.name[:20]}"
    path = os.path.join(parent, name)
    try:
        os.mkdir(path)
    except OSError as e:
        require_real(False, f"cannot create a memory cgroup: {e}")
    yield path, f"{rel}/{name}"
    wait_until(lambda: not _read(os.path.join(path, "cgroup.procs")).strip(), 120, what="cgroup empty")
    os.rmdir(path)


ALLOCATOR = r"""
import sys
held = []
for line in sys.stdin:
    held.append(b"\1" * (int(line) << 20))
    print("ok", flush=True)
"""


def test_real_v1_cgroup_usage_limit_and_oom_kill(v1_child_cgroup, tmp_path):
    cg, rel = v1_child_cgroup
    with open(os.path.join(cg, "memory.limit_in_bytes"), "w") as f:
        f.write(str(80 * MIB))
    child = subprocess.Popen([sys.executable, "-c", ALLOCATOR], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(child.pid))
        proc_root = _fake_proc(tmp_path / "proc", ["4:memory:" + rel, "0::/"])
        sentinel = MemorySentinel(proc_root, "/sys/fs/cgroup")
        before = sentinel.check(0.0)[0]
        assert before.data["cgroup"] == cg
        assert before.data["version"] == 1
        assert before.code is None

        child.stdin.write("40\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ok"
        alert = sentinel.check(3.0)[0]
        host = sentinel.host_fields()
        assert host["mem_limit_bytes"] == 80 * MIB
        assert host["mem_used_bytes"] >= 40 * MIB
        assert host["mem_peak_bytes"] >= host["mem_used_bytes"]
        assert host["oom_kills"] == 0
        assert alert.level == "ok"

        child.stdin.write("200\n")
        child.stdin.flush()
        assert child.wait(timeout=scaled(60)) == -9
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    alert = sentinel.check(6.0)[0]
    assert alert.level == "critical"
    assert alert.code == "oom_kill"
    assert sentinel.host_fields()["oom_kills"] >= 1
    assert sentinel.host_fields()["mem_peak_bytes"] >= 79 * MIB
    assert "OOM-killed" in alert.message
    assert sentinel.check(9.0)[0].code != "oom_kill"  # reported once per rise
    sentinel.close()


def test_real_own_cgroup_is_found_from_proc_self():
    parent, _ = _own_v1_memory_cgroup()
    require_real(parent is not None and os.path.isdir(parent), "no cgroup v1 memory controller")
    cg, version = find_dir("/proc", "/sys/fs/cgroup", "memory", "memory.usage_in_bytes|memory.current")
    assert (cg, version) == (parent, 1)
    reading = read_memory()
    assert reading["limit_bytes"] > 0
    assert reading["oom_kills"] is not None


# -- fixture trees ---------------------------------------------------------------------------------

def _v2_tree(tmp_path, current, max_="max", parent_max="max", events_kills=0, inactive=0, peak=None):
    cg = tmp_path / "cg"
    _write(cg, "cgroup.controllers", "cpu memory pids\n")
    _write(cg, "user.slice/memory.max", f"{parent_max}\n")
    job = "user.slice/job"
    _write(cg, f"{job}/memory.current", f"{current}\n")
    _write(cg, f"{job}/memory.max", f"{max_}\n")
    _write(cg, f"{job}/memory.stat", f"anon {current}\nfile 0\ninactive_file {inactive}\n")
    _write(cg, f"{job}/memory.events", f"low 0\nhigh 0\nmax 3\noom 1\noom_kill {events_kills}\n")
    if peak is not None:
        _write(cg, f"{job}/memory.peak", f"{peak}\n")
    proc = _fake_proc(tmp_path / "proc", ["0::/user.slice/job"], meminfo_kb=(64 << 20, 60 << 20))
    return proc, str(cg)


def test_v2_near_limit_warns_and_counts_the_working_set_only(tmp_path):
    proc, cg = _v2_tree(tmp_path, current=96 * MIB, max_=100 * MIB, inactive=4 * MIB, peak=99 * MIB)
    sentinel = MemorySentinel(proc, cg)
    alert = sentinel.check(0.0)[0]
    assert alert.level == "warn"  # 92 MiB working set of 100: page cache does not count
    assert alert.code == "mem_high"
    assert alert.value == pytest.approx(0.92)
    assert sentinel.host_fields() == {"mem_used_bytes": 92 * MIB, "mem_limit_bytes": 100 * MIB,
                                      "mem_peak_bytes": 99 * MIB, "oom_kills": 0}


def test_v2_oom_kill_rise_is_critical(tmp_path):
    proc, cg = _v2_tree(tmp_path, current=10 * MIB, max_=100 * MIB)
    sentinel = MemorySentinel(proc, cg)
    assert sentinel.check(0.0)[0].level == "ok"
    _write(cg, "user.slice/job/memory.events", "oom 2\noom_kill 2\n")
    alert = sentinel.check(3.0)[0]
    assert (alert.level, alert.code) == ("critical", "oom_kill")
    assert alert.data["oom_kills_before"] == 0
    assert sentinel.host_fields()["oom_kills"] == 2


def test_v2_parent_limit_applies_and_missing_peak_is_unknown(tmp_path):
    proc, cg = _v2_tree(tmp_path, current=10 * MIB, max_="max", parent_max=str(20 * MIB))
    reading = read_memory(proc, cg)
    assert reading["limit_bytes"] == 20 * MIB
    assert reading["limit_source"] == "cgroup"
    assert reading["peak_bytes"] is None


def test_v2_without_any_limit_uses_host_meminfo(tmp_path):
    proc, cg = _v2_tree(tmp_path, current=10 * MIB)
    reading = read_memory(proc, cg)
    assert reading["limit_source"] == "host"
    assert reading["limit_bytes"] == 64 << 30
    assert reading["used_bytes"] == 4 << 30


def test_v1_in_a_container_falls_back_to_the_mount_root_and_parent_limit(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, "memory/memory.usage_in_bytes", f"{50 * MIB}\n")
    _write(cg, "memory/memory.limit_in_bytes", f"{V1_NO_LIMIT}\n")
    _write(cg, "memory/memory.max_usage_in_bytes", f"{70 * MIB}\n")
    _write(cg, "memory/memory.stat", f"cache 1\nhierarchical_memory_limit {200 * MIB}\n"
                                     f"total_inactive_file {10 * MIB}\n")
    _write(cg, "memory/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    proc = _fake_proc(tmp_path / "proc", ["4:memory:/docker/0123abcd", "0::/"])
    reading = read_memory(proc, str(cg))
    assert reading["cgroup"] == str(cg / "memory")
    assert reading["limit_bytes"] == 200 * MIB
    assert reading["used_bytes"] == 40 * MIB
    assert reading["peak_bytes"] == 70 * MIB
    assert reading["oom_kills"] == 1


def test_v1_no_limit_anywhere_is_host_memory_not_two_to_the_63(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, "memory/x/memory.usage_in_bytes", f"{5 * MIB}\n")
    _write(cg, "memory/x/memory.limit_in_bytes", f"{V1_NO_LIMIT}\n")
    _write(cg, "memory/x/memory.stat", f"hierarchical_memory_limit {V1_NO_LIMIT}\n")
    proc = _fake_proc(tmp_path / "proc", ["4:memory:/x"], meminfo_kb=(8 << 20, 6 << 20))
    reading = read_memory(proc, str(cg))
    assert reading["limit_bytes"] == 8 << 30
    assert reading["limit_source"] == "host"
    assert reading["oom_kills"] is None  # an old kernel without oom_kill: unknown, not 0


def test_no_cgroup_and_no_meminfo_is_all_unknown(tmp_path):
    proc = _fake_proc(tmp_path / "proc", [])
    sentinel = MemorySentinel(proc, str(tmp_path / "nothing"))
    alert = sentinel.check(0.0)[0]
    assert alert.level == "ok"
    assert set(sentinel.host_fields().values()) == {None}


def test_cpu_quota_v1_and_v2(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, "cpu/a/cpu.cfs_quota_us", "250000\n")
    _write(cg, "cpu/a/cpu.cfs_period_us", "100000\n")
    proc = _fake_proc(tmp_path / "p1", ["1:cpu:/a"])
    assert cpu_quota(proc, str(cg))[0] == 2.5
    _write(cg, "cpu.max", "max 100000\n")
    _write(cg, "b/cpu.max", "400000 100000\n")
    proc2 = _fake_proc(tmp_path / "p2", ["0::/b"])
    assert cpu_quota(proc2, str(cg))[0] == 4.0
    proc3 = _fake_proc(tmp_path / "p3", ["0::/"])
    assert cpu_quota(proc3, str(cg)) == (None, str(cg))
