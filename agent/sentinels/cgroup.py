"""Finds and reads this process's cgroup (v1 or v2) on the box, under injectable /proc and cgroup roots."""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Pattern, Tuple

# v1 writes PAGE_COUNTER_MAX * page size (about 2**63) for "no limit"; nothing real is this large.
NO_LIMIT_FLOOR = 1 << 60


def read_text(path: str) -> Optional[str]:
    """The file's text, or None when it is absent or unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def read_int(path: str, reader: Optional[FdReader] = None) -> Optional[int]:
    """An integer file (``max`` and unparsable text are None)."""
    text = reader.text(path) if reader is not None else read_text(path)
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


class FdReader:
    """Keeps small kernel files open and re-reads them with pread: about 1 us each instead of 10.

    Only for files that are rewritten in place (cgroup and /proc files); a replaced file would be read
    through its old inode.
    """

    def __init__(self) -> None:
        self._fds: Dict[str, int] = {}

    def text(self, path: str) -> Optional[str]:
        """The file's text, or None when it is absent or unreadable."""
        fd = self._fds.get(path)
        try:
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            return os.pread(fd, 1 << 16, 0).decode("utf-8", "replace")
        except OSError:
            self._fds.pop(path, None)
            if fd is not None:
                os.close(fd)
            return None

    def close(self) -> None:
        """Close every kept file."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


_PATTERNS: Dict[Tuple[str, ...], Pattern[str]] = {}


def pick_kv(text: Optional[str], *keys: str) -> Dict[str, int]:
    """Only ``keys`` of a ``key value`` file: one regex pass, far cheaper than parsing every line."""
    pattern = _PATTERNS.get(keys)
    if pattern is None:
        alternatives = "|".join(re.escape(k) for k in keys)
        pattern = _PATTERNS[keys] = re.compile(rf"^({alternatives}):?\s+(\d+)", re.MULTILINE)
    return {m.group(1): int(m.group(2)) for m in pattern.finditer(text or "")}


def limit_or_none(value: Optional[int]) -> Optional[int]:
    """A cgroup limit, with v1's "no limit" sentinel mapped to None."""
    if value is None or value >= NO_LIMIT_FLOOR:
        return None
    return value


def proc_cgroups(proc_root: str, pid: str = "self") -> List[Tuple[str, List[str], str]]:
    """/proc/<pid>/cgroup as (hierarchy id, controllers, path) triples."""
    out = []
    for line in (read_text(os.path.join(proc_root, pid, "cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[0], [c for c in parts[1].split(",") if c], parts[2]))
    return out


def _candidates(mount: str, path: str) -> List[str]:
    # In a container /proc says /docker/<id>/... while the container sees its own cgroup as the
    # mount's root: try the full path, then drop leading components, then the root itself.
    parts = [p for p in path.split("/") if p]
    return [os.path.join(mount, *parts[i:]) for i in range(len(parts) + 1)]


def find_dir(proc_root: str, cgroup_root: str, controller: str, probe: str,
             pid: str = "self") -> Tuple[Optional[str], Optional[int]]:
    """The cgroup dir holding ``probe`` for ``controller``, and the cgroup version (1 or 2).

    v1 is preferred when a ``<controller>:`` line exists (hybrid hosts keep memory in v1); the v2
    ``0::`` line is used otherwise. ``probe`` is a file name per version: "v1file|v2file".
    """
    probe_v1, _, probe_v2 = probe.partition("|")
    lines = proc_cgroups(proc_root, pid)
    for _hid, controllers, path in lines:
        if controller in controllers:
            for mount in (",".join(controllers), controller):
                for cand in _candidates(os.path.join(cgroup_root, mount), path):
                    if os.path.exists(os.path.join(cand, probe_v1)):
                        return cand, 1
    for hid, controllers, path in lines:
        if hid == "0" and not controllers:
            for cand in _candidates(cgroup_root, path):
                if os.path.exists(os.path.join(cand, probe_v2)):
                    return cand, 2
    return None, None


def v2_tightest_limit(cg_dir: str, cgroup_root: str, name: str,
                      reader: Optional[FdReader] = None) -> Optional[int]:
    """The smallest numeric ``name`` (memory.max) from the cgroup up to the root: parents cap children."""
    best: Optional[int] = None
    root = os.path.abspath(cgroup_root)
    cur = os.path.abspath(cg_dir)
    while True:
        value = limit_or_none(read_int(os.path.join(cur, name), reader))
        if value is not None and (best is None or value < best):
            best = value
        if cur == root or not cur.startswith(root + "/"):
            return best
        cur = os.path.dirname(cur)


def cpu_quota(proc_root: str, cgroup_root: str) -> Tuple[Optional[float], Optional[str]]:
    """The CPU quota in cores (None when unlimited or unknown) and the cgroup dir it came from."""
    cg, version = find_dir(proc_root, cgroup_root, "cpu", "cpu.cfs_quota_us|cpu.max")
    if cg is None:
        return None, None
    if version == 1:
        quota = read_int(os.path.join(cg, "cpu.cfs_quota_us"))
        period = read_int(os.path.join(cg, "cpu.cfs_period_us"))
        if quota is None or period is None or quota <= 0 or period <= 0:
            return None, cg
        return quota / period, cg
    parts = (read_text(os.path.join(cg, "cpu.max")) or "").split()
    if len(parts) != 2 or parts[0] == "max":
        return None, cg
    try:
        return int(parts[0]) / int(parts[1]), cg
    except (ValueError, ZeroDivisionError):
        return None, cg
