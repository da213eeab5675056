"""Memory sentinel on the box: cgroup v1/v2 usage, limit, peak, OOM kills; host meminfo without a limit."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from .alert import Alert, human_bytes, level_for
from .cgroup import FdReader, find_dir, limit_or_none, pick_kv, read_int, read_text, v2_tightest_limit


def read_memory(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup",
                cg_dir: Optional[str] = None, version: Optional[int] = None,
                reader: Optional[FdReader] = None) -> Dict[str, Any]:
    """One reading: usage, working set, limit, peak, oom_kills, with None for what is unknown.

    ``used_bytes`` is the working set (usage minus inactive file cache), because page cache fills a
    cgroup up to its limit on any box that writes checkpoints and is reclaimed before an OOM kill.
    Without a cgroup limit the host's /proc/meminfo gives both used and limit.
    """
    text = reader.text if reader is not None else read_text

    def num(name: str) -> Optional[int]:
        return read_int(os.path.join(cg_dir or "", name), reader)

    if cg_dir is None:
        cg_dir, version = find_dir(proc_root, cgroup_root, "memory",
                                   "memory.usage_in_bytes|memory.current")
    out: Dict[str, Any] = {"cgroup": cg_dir, "version": version, "usage_bytes": None,
                           "used_bytes": None, "limit_bytes": None, "peak_bytes": None,
                           "oom_kills": None, "limit_source": None}
    usage, inactive = None, 0
    if cg_dir is not None and version == 1:
        usage = num("memory.usage_in_bytes")
        stat = pick_kv(text(os.path.join(cg_dir, "memory.stat")), "hierarchical_memory_limit",
                       "total_inactive_file", "inactive_file")
        limit = limit_or_none(num("memory.limit_in_bytes"))
        if limit is None:  # a parent's limit still applies to us
            limit = limit_or_none(stat.get("hierarchical_memory_limit"))
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        oom = pick_kv(text(os.path.join(cg_dir, "memory.oom_control")), "oom_kill")
        out.update(usage_bytes=usage, limit_bytes=limit, oom_kills=oom.get("oom_kill"),
                   peak_bytes=num("memory.max_usage_in_bytes"))
    elif cg_dir is not None and version == 2:
        usage = num("memory.current")
        inactive = pick_kv(text(os.path.join(cg_dir, "memory.stat")), "inactive_file").get("inactive_file", 0)
        events = pick_kv(text(os.path.join(cg_dir, "memory.events")), "oom_kill")
        out.update(usage_bytes=usage, limit_bytes=v2_tightest_limit(cg_dir, cgroup_root, "memory.max", reader),
                   oom_kills=events.get("oom_kill"), peak_bytes=num("memory.peak"))
    if usage is not None:
        out["used_bytes"] = max(0, usage - inactive)
    if out["limit_bytes"] is not None:
        out["limit_source"] = "cgroup"
    else:
        info = pick_kv(text(os.path.join(proc_root, "meminfo")), "MemTotal", "MemAvailable")
        total, avail = info.get("MemTotal"), info.get("MemAvailable")
        if total is not None:
            out["limit_bytes"] = total * 1024
            out["limit_source"] = "host"
            if avail is not None:
                out["used_bytes"] = (total - avail) * 1024
    return out


class MemorySentinel:
    """Warn near the memory limit; critical with code ``oom_kill`` when the kill counter rises."""

    name = "memory"

    def __init__(self, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup",
                 warn_frac: float = 0.9, crit_frac: float = 0.95, interval_s: float = 3.0) -> None:
        self.proc_root = proc_root
        self.cgroup_root = cgroup_root
        self.warn_frac = warn_frac
        self.crit_frac = crit_frac
        self.interval_s = interval_s
        self._cg: Optional[str] = None
        self._version: Optional[int] = None
        self._oom_seen: Optional[int] = None
        self._host: Dict[str, Any] = {}
        self._reader = FdReader()

    def _reading(self) -> Dict[str, Any]:
        # Resolve the cgroup once; again only if it vanished (the agent does not move between cgroups).
        if self._cg is None or not os.path.isdir(self._cg):
            self._reader.close()
            self._cg, self._version = find_dir(self.proc_root, self.cgroup_root, "memory",
                                               "memory.usage_in_bytes|memory.current")
        return read_memory(self.proc_root, self.cgroup_root, self._cg, self._version, self._reader)

    def check(self, now: float) -> List[Alert]:
        """A handful of small reads; no scan."""
        r = self._reading()
        self._host = {"mem_used_bytes": r["used_bytes"], "mem_limit_bytes": r["limit_bytes"],
                      "mem_peak_bytes": r["peak_bytes"], "oom_kills": r["oom_kills"]}
        used, limit = r["used_bytes"], r["limit_bytes"]
        frac = used / limit if used is not None and limit else None
        level = level_for(frac, self.warn_frac, self.crit_frac)
        code: Optional[str] = "mem_high" if level != "ok" else None
        where = "cgroup limit" if r["limit_source"] == "cgroup" else "host memory"
        message = None
        if level != "ok":
            message = f"{human_bytes(used)} of {human_bytes(limit)} {where} in use ({frac:.0%})"
        kills, prev = r["oom_kills"], self._oom_seen
        if kills is not None:
            if prev is not None and kills > prev:
                level, code = "critical", "oom_kill"
                message = (f"the kernel OOM-killed {kills - prev} process(es) in this cgroup "
                           f"(peak {human_bytes(r['peak_bytes'])}, limit {human_bytes(limit)})")
            self._oom_seen = kills
        data = dict(r, frac=frac, oom_kills_before=prev)
        return [Alert(self.name, level, None if frac is None else round(frac, 4),
                      self.crit_frac if level == "critical" else self.warn_frac, message, code, data)]

    def close(self) -> None:
        """Close the cgroup files kept open."""
        self._reader.close()

    def host_fields(self) -> Dict[str, Any]:
        """mem_used_bytes (working set), mem_limit_bytes, mem_peak_bytes and oom_kills."""
        return dict(self._host)
