"""Zombie-VRAM sentinel on the box: GPU memory no listed process accounts for, with /proc fd evidence.

It only reports. ``reap_candidates`` lists the pids proven (by an open /dev/nvidia* fd) to hold a GPU,
minus the agent and the run's own process trees; ``rgt reap`` kills from that list only with consent.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple, Union

from ..nvml import GpuLost, Nvml, NvmlUnavailable
from ..procs import proc_stat
from .alert import Alert, human_bytes

PidSource = Union[None, Iterable[int], Callable[[], Iterable[int]]]


def device_holders(proc_root: str = "/proc",
                   device_prefix: str = "/dev/nvidia") -> Tuple[Dict[int, List[str]], int]:
    """Every process with an fd open on a GPU device, as {pid: [device paths]}.

    Also returns how many fd dirs could not be read (other users' processes, without privilege).
    """
    holders: Dict[int, List[str]] = {}
    unreadable = 0
    try:
        names = os.listdir(proc_root)
    except OSError:
        return holders, 0
    for name in names:
        if not name.isdigit():
            continue
        fd_dir = os.path.join(proc_root, name, "fd")
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            unreadable += 1
            continue
        except OSError:  # gone, or not a process
            continue
        devices = set()
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.startswith(device_prefix):
                devices.add(target)
        if devices:
            holders[int(name)] = sorted(devices)
    return holders, unreadable


def _cmdline(pid: int, proc_root: str) -> Optional[str]:
    try:
        with open(os.path.join(proc_root, str(pid), "cmdline"), "rb") as f:
            raw = f.read(400)
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:200] or None


def in_trees(pid: int, roots: Set[int], proc_root: str, max_hops: int = 64) -> bool:
    """True if ``pid`` is one of ``roots`` or descends from one (DataLoader workers hold the GPU too)."""
    cur = pid
    for _ in range(max_hops):
        if cur in roots:
            return True
        st = proc_stat(cur, proc_root)
        if st is None or st.ppid <= 0 or st.ppid == cur:
            return False
        cur = st.ppid
    return False


def _pids(source: PidSource) -> Set[int]:
    if source is None:
        return set()
    if callable(source):
        source = source()
    return {int(p) for p in source or ()}


def reap_candidates(proc_root: str = "/proc", own_pid: Optional[int] = None, tracked_pids: PidSource = None,
                    min_age_s: float = 120.0, device_prefix: str = "/dev/nvidia",
                    exclude_pids: PidSource = None, now: Optional[float] = None) -> List[Dict[str, Any]]:
    """Pids proven by an open fd to hold a GPU device, and nobody's legitimate business.

    That is: neither the agent, nor a tracked pid, nor a descendant of either, nor in
    ``exclude_pids`` (e.g. processes NVML lists as legitimate users), and older than ``min_age_s``.
    Each entry carries its start time, so a kill can be checked against it.
    """
    now = time.time() if now is None else now
    roots = _pids(tracked_pids) | {os.getpid() if own_pid is None else own_pid}
    excluded = _pids(exclude_pids)
    holders, _ = device_holders(proc_root, device_prefix)
    out = []
    for pid, devices in sorted(holders.items()):
        if pid in excluded or in_trees(pid, roots, proc_root):
            continue
        st = proc_stat(pid, proc_root)
        if st is None:
            continue
        age = now - st.start_time
        if age < min_age_s:
            continue
        out.append({"pid": pid, "start_time": st.start_time, "age_s": round(age, 1), "devices": devices,
                    "cmdline": _cmdline(pid, proc_root)})
    return out


class ZombieVramSentinel:
    """Warn when VRAM beyond what NVML attributes to processes stays in use for ``hold_s``."""

    name = "zombie_vram"

    def __init__(self, nvml: Nvml, proc_root: str = "/proc", own_pids: PidSource = None,
                 own_pid: Optional[int] = None, hold_s: float = 120.0,
                 min_unattributed_bytes: int = 1 << 30, interval_s: float = 30.0,
                 device_prefix: str = "/dev/nvidia") -> None:
        self.nvml = nvml
        self.proc_root = proc_root
        self.own_pids = own_pids
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.hold_s = hold_s
        self.min_unattributed_bytes = min_unattributed_bytes
        self.interval_s = interval_s
        self.device_prefix = device_prefix
        self._since: Dict[int, float] = {}

    def _unattributed(self) -> Dict[int, int]:
        out: Dict[int, int] = {}
        for i in range(self.nvml.count):
            try:
                used, _total = self.nvml.memory(i)
                procs = self.nvml.processes(i)
            except GpuLost:
                continue  # the GPU sentinel reports it
            if used is None or procs is None:
                continue  # NVML cannot say who uses what here: no claim either way
            out[i] = max(0, used - sum(u for _pid, u in procs if u))
        return out

    def check(self, now: float) -> List[Alert]:
        """Two NVML calls per GPU; the /proc fd scan only once the excess has lasted ``hold_s``."""
        if not self.nvml.ensure(now):
            return []
        try:
            excess = self._unattributed()
        except NvmlUnavailable:
            return []
        for i, nbytes in excess.items():
            if nbytes >= self.min_unattributed_bytes:
                self._since.setdefault(i, now)
            else:
                self._since.pop(i, None)
        held = {i: excess[i] for i, t in self._since.items() if i in excess and now - t >= self.hold_s}
        top = max(excess.values()) if excess else None
        if not held:
            return [Alert(self.name, "ok", top, self.min_unattributed_bytes)]
        holders, unreadable = device_holders(self.proc_root, self.device_prefix)
        roots = _pids(self.own_pids) | {self.own_pid}
        ours = {p for p in holders if in_trees(p, roots, self.proc_root)}
        foreign = {p: d for p, d in holders.items() if p not in ours}
        what = ", ".join(f"gpu{i}: {human_bytes(n)} for {now - self._since[i]:.0f} s"
                         for i, n in held.items())
        data = {"unattributed_bytes": held,
                "holders": {p: {"devices": d, "cmdline": _cmdline(p, self.proc_root)}
                            for p, d in foreign.items()},
                "own_holders": sorted(ours), "unreadable_fd_dirs": unreadable}
        if foreign:
            who = ", ".join(f"pid {p} ({_cmdline(p, self.proc_root) or '?'})" for p in sorted(foreign)[:5])
            msg = (f"VRAM no listed process accounts for ({what}); /dev/nvidia* held open by {who}; "
                   "nothing is killed automatically: `rgt reap` lists them")
            return [Alert(self.name, "warn", top, self.min_unattributed_bytes, msg, "zombie_vram", data)]
        if ours:
            msg = (f"VRAM not attributed by NVML ({what}) is held by this run's own processes "
                   "(a container PID namespace hides them from NVML)")
            return [Alert(self.name, "ok", top, self.min_unattributed_bytes, msg, None, data)]
        why = "fd evidence unreadable" if unreadable else "no holder visible from here"
        msg = (f"VRAM no listed process accounts for ({what}); {why}: another container on this GPU "
               "or a leaked context; restart the container if training OOMs on an 'empty' GPU")
        return [Alert(self.name, "warn", top, self.min_unattributed_bytes, msg, "zombie_vram", data)]
