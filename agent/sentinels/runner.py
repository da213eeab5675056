"""Runs the box's sentinels when due, isolates their failures, and folds their findings into status.json."""

from __future__ import annotations

import logging
import os
import traceback
from typing import Any, Dict, Iterable, List, Optional, Tuple

from rgt.shared.status import Gpu, Host, Sentinel

from .alert import Alert
from .disk import DEFAULT_EXTRA
from .zombie import PidSource

_HOST_FIELDS = ("disk_free_bytes", "inodes_free", "mem_used_bytes", "mem_limit_bytes", "mem_peak_bytes",
                "oom_kills")


class SentinelRunner:
    """Calls each sentinel's ``check(now)`` every ``interval_s``; keeps the latest findings.

    ``now`` is any monotonic clock in seconds (the daemon passes ``time.monotonic()``). Alerts are
    level-triggered: a condition that holds is reported again at every check, the agent dedupes.
    """

    def __init__(self, sentinels: Iterable[Any], log: Any = None) -> None:
        self.sentinels = list(sentinels)
        self.log = log if log is not None else logging.getLogger("rgt.agent.sentinels")
        self._due: Dict[int, float] = {}
        self._latest: Dict[int, List[Alert]] = {}

    def _report(self, name: str, tb: str) -> None:
        text = f"sentinel {name} failed:\n{tb}"
        if hasattr(self.log, "error"):
            self.log.error(text)
        elif callable(self.log):
            self.log(text)

    def tick(self, now: float) -> List[Alert]:
        """Run the sentinels that are due; return their warn and critical alerts."""
        out: List[Alert] = []
        for key, sentinel in enumerate(self.sentinels):
            due = self._due.get(key, float("-inf"))
            interval = float(sentinel.interval_s)
            if due - now > interval:  # the clock went backwards: do not starve the sentinel
                due = now
            if now < due:
                continue
            self._due[key] = now + interval
            try:
                alerts = list(sentinel.check(now))
            except Exception as e:  # noqa: BLE001 - policy point: a broken sentinel never kills the agent
                tb = traceback.format_exc()
                self._report(getattr(sentinel, "name", type(sentinel).__name__), tb)
                name = getattr(sentinel, "name", type(sentinel).__name__)
                alerts = [Alert(name, "warn", message=f"sentinel {name} failed: {type(e).__name__}: {e}",
                                code="sentinel_error", data={"traceback": tb})]
            self._latest[key] = alerts
            out.extend(a for a in alerts if a.level != "ok")
        return out

    def alerts(self) -> List[Alert]:
        """Every latest finding, ok ones too."""
        return [a for key in sorted(self._latest) for a in self._latest[key]]

    def snapshot(self) -> Tuple[List[Sentinel], List[Gpu], Host]:
        """status.json's ``sentinels``, ``gpus`` and ``host`` from the latest checks."""
        host: Dict[str, Any] = {}
        gpus: List[Gpu] = []
        for sentinel in self.sentinels:
            fields = getattr(sentinel, "host_fields", None)
            if fields is not None:
                host.update({k: v for k, v in fields().items() if k in _HOST_FIELDS})
            rows = getattr(sentinel, "gpu_rows", None)
            if rows is not None:
                gpus.extend(rows())
        return [a.to_status() for a in self.alerts()], gpus, Host(**host)

    def close(self) -> None:
        """Release NVML (shared by the GPU sentinels) and the files the sentinels keep open."""
        seen = set()
        for sentinel in self.sentinels:
            if hasattr(sentinel, "close"):
                sentinel.close()
            nvml = getattr(sentinel, "nvml", None)
            if nvml is not None and id(nvml) not in seen:
                seen.add(id(nvml))
                nvml.close()


def build_sentinels(watch_dirs: Dict[str, str], warn_frac: float = 0.9, crit_frac: float = 0.95,
                    proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", nvml_lib: Any = None,
                    own_pids: PidSource = None, log: Any = None,
                    extra_dirs: Tuple[str, ...] = DEFAULT_EXTRA, own_pid: Optional[int] = None,
                    hot_c: float = 83.0) -> SentinelRunner:
    """The agent's sentinels for one run.

    ``watch_dirs`` maps a name to a dir (run, ckpt, durable, hf_cache, ...); /tmp and /dev/shm are
    added. ``own_pids`` is the run's tracked pids, or a callable returning them at check time (the
    trainer changes between attempts); their process trees are never called zombies.
    ``nvml_lib`` replaces the pynvml module (tests inject raw NVML values through it).
    """
    from ..nvml import Nvml
    from .disk import DiskSentinel
    from .gpu import GpuSentinel
    from .memory import MemorySentinel
    from .zombie import ZombieVramSentinel

    nvml = Nvml(nvml_lib)
    return SentinelRunner([
        DiskSentinel(watch_dirs, warn_frac, crit_frac, extra_dirs=extra_dirs),
        MemorySentinel(proc_root, cgroup_root, warn_frac, crit_frac),
        GpuSentinel(nvml, hot_c=hot_c),
        ZombieVramSentinel(nvml, proc_root, own_pids=own_pids,
                           own_pid=os.getpid() if own_pid is None else own_pid),
    ], log)
