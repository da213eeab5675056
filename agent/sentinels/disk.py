"""Disk sentinel on the box: bytes and inodes of every watched mount, and what took the space at critical."""

from __future__ import annotations

import os
import stat
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .alert import Alert, human_bytes, level_for

DEFAULT_EXTRA = ("/tmp", "/dev/shm")


def existing_ancestor(path: str) -> Optional[str]:
    """The path itself or its nearest existing parent (a checkpoint dir may not exist yet)."""
    path = os.path.abspath(path)
    while True:
        if os.path.exists(path):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


class Mount:
    """The watched dirs that share one filesystem (one st_dev)."""

    def __init__(self, dev: int, path: str) -> None:
        self.dev = dev
        self.path = path  # the first watched dir on it names it
        self.names: List[str] = []
        self.dirs: List[str] = []


def group_mounts(dirs: List[Tuple[str, str]]) -> List[Mount]:
    """Group (name, path) pairs by device, in the order given; missing paths fall back to a parent."""
    by_dev: Dict[int, Mount] = {}
    for name, path in dirs:
        real = existing_ancestor(path)
        if real is None:
            continue
        try:
            dev = os.stat(real).st_dev
        except OSError:
            continue
        mount = by_dev.get(dev)
        if mount is None:
            mount = by_dev[dev] = Mount(dev, os.path.abspath(path))
        mount.names.append(name)
        if real not in mount.dirs:
            mount.dirs.append(real)
    return list(by_dev.values())


def usage(path: str) -> Dict[str, Optional[float]]:
    """Usage from statvfs in df's terms: used fractions against what an unprivileged writer can still use."""
    st = os.statvfs(path)
    used_b = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail_b = st.f_bavail * st.f_frsize
    out: Dict[str, Optional[float]] = {
        "total_bytes": st.f_blocks * st.f_frsize,
        "free_bytes": avail_b,
        "bytes_frac": used_b / (used_b + avail_b) if used_b + avail_b > 0 else None,
        "total_inodes": None, "free_inodes": None, "inodes_frac": None,
    }
    if st.f_files > 0:  # 0 means this filesystem has no inode limit (btrfs, some overlays)
        used_i = st.f_files - st.f_ffree
        out.update(total_inodes=st.f_files, free_inodes=st.f_favail,
                   inodes_frac=used_i / (used_i + st.f_favail) if used_i + st.f_favail > 0 else None)
    return out


def _nested(dirs: List[str]) -> List[str]:
    """Drop dirs that lie inside another one, so nothing is counted twice."""
    out: List[str] = []
    for d in sorted(set(dirs)):
        if not any(d.startswith(p.rstrip("/") + "/") for p in out):
            out.append(d)
    return out


def _entries(path: str, dev: int, budget: List[int]) -> Iterator[Tuple[os.DirEntry, os.stat_result, int]]:
    """Children of ``path`` on filesystem ``dev`` with their lstat and allocated bytes, one budget unit each."""
    try:
        it = os.scandir(path)
    except OSError:
        return
    with it:
        for entry in it:
            if budget[0] <= 0:
                return
            budget[0] -= 1
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev == dev:
                yield entry, st, st.st_blocks * 512 if st.st_blocks else st.st_size


def largest_entries(dirs: List[str], dev: int, max_entries: int = 20000,
                    top_n: int = 5) -> Dict[str, Any]:
    """A bounded du: the biggest children of each dir (bytes and inodes) and the biggest single files.

    Stays on one filesystem, never follows links, and stops after ``max_entries`` lstat calls.
    """
    budget = [max_entries]
    files: List[Tuple[int, str]] = []
    children: List[Dict[str, Any]] = []

    def walk(path: str) -> Tuple[int, int]:
        total_b, total_i = 0, 0
        stack = [path]
        while stack and budget[0] > 0:
            for entry, st, size in _entries(stack.pop(), dev, budget):
                total_b += size
                total_i += 1
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    files.append((size, entry.path))
        return total_b, total_i

    for root in _nested(dirs):
        for entry, st, size in _entries(root, dev, budget):
            inodes = 1
            if stat.S_ISDIR(st.st_mode):
                sub_b, sub_i = walk(entry.path)
                size, inodes = size + sub_b, 1 + sub_i
            elif stat.S_ISREG(st.st_mode):
                files.append((size, entry.path))
            children.append({"path": entry.path, "bytes": size, "inodes": inodes})
    children.sort(key=lambda c: c["bytes"], reverse=True)
    files.sort(reverse=True)
    by_inodes = sorted(children, key=lambda c: c["inodes"], reverse=True)
    return {
        "largest": children[:top_n],
        "most_inodes": by_inodes[:top_n],
        "largest_files": [{"path": p, "bytes": b} for b, p in files[:top_n]],
        "truncated": budget[0] <= 0,
    }


class DiskSentinel:
    """Warn at ``warn_frac`` of bytes or inodes used, critical (with a prune request) at ``crit_frac``."""

    name = "disk"

    def __init__(self, watch_dirs: Dict[str, str], warn_frac: float = 0.9, crit_frac: float = 0.95,
                 extra_dirs: Tuple[str, ...] = DEFAULT_EXTRA, interval_s: float = 10.0,
                 primary: Optional[str] = None, scan_max_entries: int = 20000,
                 scan_every_s: float = 60.0) -> None:
        if not 0 < warn_frac <= crit_frac <= 1:
            raise ValueError(f"need 0 < warn_frac <= crit_frac <= 1, got {warn_frac}, {crit_frac}")
        self.dirs = list(watch_dirs.items()) + [(d, d) for d in extra_dirs]
        self.warn_frac = warn_frac
        self.crit_frac = crit_frac
        self.interval_s = interval_s
        names = list(watch_dirs)
        self.primary = primary or ("ckpt" if "ckpt" in names else (names[0] if names else None))
        self.scan_max_entries = scan_max_entries
        self.scan_every_s = scan_every_s
        self._scans: Dict[int, Tuple[float, Dict[str, Any]]] = {}
        self._host: Dict[str, Any] = {}
        self._mounts: List[Mount] = []
        self._grouped_at = float("-inf")
        self.regroup_s = 60.0  # dirs appear (ckpt) and mounts come (durable) rarely

    def _scan(self, mount: Mount, now: float) -> Dict[str, Any]:
        cached = self._scans.get(mount.dev)
        if cached is not None and now - cached[0] < self.scan_every_s:
            return cached[1]
        result = largest_entries(mount.dirs, mount.dev, self.scan_max_entries)
        self._scans[mount.dev] = (now, result)
        return result

    def check(self, now: float) -> List[Alert]:
        """One statvfs per filesystem; the bounded scan only for a critical one."""
        alerts: List[Alert] = []
        host: Dict[str, Any] = {}
        if not self._mounts or abs(now - self._grouped_at) >= self.regroup_s:
            self._mounts, self._grouped_at = group_mounts(self.dirs), now
        for mount in self._mounts:
            try:
                u = usage(mount.dirs[0])
            except OSError as e:
                alerts.append(Alert(f"disk:{mount.path}", "warn", message=f"statvfs failed: {e}",
                                    code="disk_unreadable", data={"mount": mount.path}))
                continue
            if self.primary in mount.names or not host:
                host = {"disk_free_bytes": u["free_bytes"], "inodes_free": u["free_inodes"]}
            for resource in ("bytes", "inodes"):
                frac = u[f"{resource}_frac"]
                if frac is None:
                    continue
                alerts.append(self._alert(mount, resource, frac, u, now))
        self._host = host
        return alerts

    def _alert(self, mount: Mount, resource: str, frac: float, u: Dict[str, Any], now: float) -> Alert:
        level = level_for(frac, self.warn_frac, self.crit_frac)
        name = f"{'disk' if resource == 'bytes' else 'inodes'}:{mount.path}"
        data: Dict[str, Any] = {"mount": mount.path, "resource": resource, "names": mount.names,
                                "dirs": mount.dirs, "free_bytes": u["free_bytes"],
                                "free_inodes": u["free_inodes"]}
        limit = self.crit_frac if level == "critical" else self.warn_frac
        if level == "ok":
            return Alert(name, level, round(frac, 4), limit, None, None, data)
        if resource == "bytes":
            text = (f"{frac:.0%} of bytes used on {mount.path} ({', '.join(mount.names)}): "
                    f"{human_bytes(u['free_bytes'])} free of {human_bytes(u['total_bytes'])}")
        else:
            used = u["total_inodes"] - u["free_inodes"]
            text = (f"{used:,} of {u['total_inodes']:,} inodes used on {mount.path} "
                    f"({', '.join(mount.names)}): {u['free_inodes']:,} free")
        code = "disk_low"
        if level == "critical":
            code = "prune_request"
            scan = self._scan(mount, now)
            data.update(scan)
            top = scan["largest"] if resource == "bytes" else scan["most_inodes"]
            named = ", ".join(
                f"{c['path']} {human_bytes(c['bytes'])}" if resource == "bytes"
                else f"{c['path']} {c['inodes']:,} inodes" for c in top[:3])
            text += f"; prune what the agent owns; largest: {named or 'nothing readable'}"
        return Alert(name, level, round(frac, 4), limit, text, code, data)

    def host_fields(self) -> Dict[str, Any]:
        """disk_free_bytes and inodes_free of the checkpoint dir's filesystem (else the first)."""
        return dict(self._host)
