"""Process identity on the box (pid + start time + incarnation) and group kills that touch only tracked pids."""

from __future__ import annotations

import fcntl
import os
import signal
import time
from typing import Callable, List, Mapping, NamedTuple, Optional, Tuple

PROC = "/proc"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_btime_cache: dict = {}


def try_flock(path: str) -> Tuple[Optional[int], List[str]]:
    """Take an exclusive flock without waiting: (fd, []) when taken; (None, the holder's note) when held.

    The note is what the holder wrote into the file (an agent writes "pid start_time").
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        note = os.pread(fd, 128, 0).decode(errors="replace").split()
        os.close(fd)
        return None, note
    return fd, []


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def boot_time(proc: str = PROC) -> float:
    """Unix time of the boot, from /proc/stat's btime."""
    if proc not in _btime_cache:
        text = _read(os.path.join(proc, "stat")) or ""
        btime = 0.0
        for line in text.splitlines():
            if line.startswith("btime "):
                btime = float(line.split()[1])
        _btime_cache[proc] = btime
    return _btime_cache[proc]


class ProcStat(NamedTuple):
    """The fields of /proc/<pid>/stat this module needs."""

    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    start_time: float  # unix seconds, exact to one clock tick


def proc_stat(pid: int, proc: str = PROC) -> Optional[ProcStat]:
    """Read /proc/<pid>/stat, or None when the process is gone."""
    text = _read(os.path.join(proc, str(pid), "stat"))
    if not text:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    rest = text[text.rfind(")") + 2:].split()
    ticks = int(rest[19])
    start = round(boot_time(proc) + ticks / _CLK_TCK, 2)
    return ProcStat(pid, rest[0], int(rest[1]), int(rest[2]), int(rest[3]), start)


def start_time(pid: int, proc: str = PROC) -> Optional[float]:
    """Start time of a live process in unix seconds, or None."""
    st = proc_stat(pid, proc)
    return st.start_time if st else None


def boot_id(proc: str = PROC) -> str:
    """The kernel's boot id; a container restart keeps it, a reboot changes it."""
    return (_read(os.path.join(proc, "sys", "kernel", "random", "boot_id")) or "unknown").strip()


def incarnation(proc: str = PROC, env: Optional[Mapping[str, str]] = None) -> str:
    """Boot id plus pid 1's start time: changes on a reboot and on a container restart.

    Inside a Slurm job the job id and its restart count are part of it too: a requeued job on the
    same node keeps boot id and pid 1, but is a new incarnation all the same (its trainer was killed).
    """
    env = os.environ if env is None else env
    base = f"{boot_id(proc)}:{start_time(1, proc) or 0:.2f}"
    job = env.get("SLURM_JOB_ID")
    if job:
        base += f":slurm-{job}.{env.get('SLURM_RESTART_COUNT') or 0}"
    return base


def is_same_process(pid: Optional[int], started: Optional[float], proc: str = PROC) -> bool:
    """True when ``pid`` is alive, not a zombie, and still the process that started at ``started``."""
    if not pid or started is None:
        return False
    st = proc_stat(pid, proc)
    return st is not None and st.state != "Z" and abs(st.start_time - started) < 0.05


def _environ_has(pid: int, needle: bytes, proc: str) -> bool:
    try:
        with open(os.path.join(proc, str(pid), "environ"), "rb") as f:
            return needle in f.read().split(b"\0")
    except OSError:
        return False


def group_members(pgid: int, run_tag: bytes, proc: str = PROC) -> List[int]:
    """Live pids of process group ``pgid`` that carry the run's tag in their environment.

    Used when the group leader is gone: the environment tag proves a pid is ours, so a reused
    pgid can never lead us to kill a stranger.
    """
    pids = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        st = proc_stat(int(name), proc)
        if st and st.pgid == pgid and st.state != "Z" and _environ_has(st.pid, run_tag, proc):
            pids.append(st.pid)
    return pids


def catches(pid: int, sig: int, proc: str = PROC) -> Optional[bool]:
    """Whether ``pid`` has a handler for (or ignores) ``sig``, from SigCgt/SigIgn; None when it is gone.

    A signal whose default action is to terminate must not be sent to a process that does not expect it.
    """
    text = _read(os.path.join(proc, str(pid), "status"))
    if text is None:
        return None
    bit = 1 << (int(sig) - 1)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("SigCgt", "SigIgn") and int(value.strip() or "0", 16) & bit:
            return True
    return False


def not_catching(leader: int, started: float, run_tag: bytes, sig: int, proc: str = PROC) -> List[int]:
    """The live pids of the trainer's group that would die of ``sig`` (no handler, not ignored)."""
    pids = set(group_members(leader, run_tag, proc))
    if is_same_process(leader, started, proc):
        pids.add(leader)
    return sorted(p for p in pids if catches(p, sig, proc) is False)


def signal_tracked(leader: int, started: float, run_tag: bytes, sig: int, proc: str = PROC) -> bool:
    """Send ``sig`` to the trainer's group; returns False once nothing of ours is left."""
    if is_same_process(leader, started, proc):
        try:
            os.killpg(leader, sig)
        except ProcessLookupError:
            return False
        return True
    members = group_members(leader, run_tag, proc)
    for pid in members:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return bool(members)


def stop_group(
    leader: int,
    started: float,
    run_tag: bytes,
    grace_s: float,
    proc: str = PROC,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """SIGTERM the trainer's group, wait until one monotonic deadline, then SIGKILL what is left.

    Returns "gone" (nothing was running), "terminated" or "killed".
    """
    if not signal_tracked(leader, started, run_tag, signal.SIGTERM, proc):
        return "gone"
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not is_same_process(leader, started, proc) and not group_members(leader, run_tag, proc):
            return "terminated"
        sleep(0.05)
    signal_tracked(leader, started, run_tag, signal.SIGKILL, proc)
    return "killed"
