"""Which checkpoints to keep (agent, on the box): the last K plus the best by a metric; pure functions."""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple


def order_key(rec: Dict[str, Any]) -> Tuple[int, int, str]:
    """Newest last: by write time, then step, then name."""
    step = rec.get("step")
    return (int(rec.get("mtime_ns") or 0), -1 if step is None else int(step), str(rec.get("key")))


def parse_best_metric(value: Any) -> Optional[Tuple[str, str]]:
    """``{"name": "loss", "mode": "min"}`` (or just ``"loss"``, meaning min) as (name, mode); None if unset."""
    if isinstance(value, str) and value:
        return value, "min"
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        mode = str(value.get("mode", "min")).lower()
        return value["name"], "max" if mode == "max" else "min"
    return None


def metric_value(rec: Dict[str, Any], name: str) -> Optional[float]:
    """The record's finite value of a metric (from the helper's sidecar), if any."""
    metrics = rec.get("metrics") or {}
    v = metrics.get(name) if isinstance(metrics, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def best(records: Iterable[Dict[str, Any]], best_metric: Optional[Tuple[str, str]]) -> Optional[Dict[str, Any]]:
    """The record with the best metric; ties go to the newest."""
    if best_metric is None:
        return None
    name, mode = best_metric
    scored = [(metric_value(r, name), r) for r in records]
    scored = [(v, r) for v, r in scored if v is not None]
    if not scored:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda vr: (sign * vr[0], order_key(vr[1])))[1]


def keep_set(records: List[Dict[str, Any]], keep_last: int,
             best_metric: Optional[Tuple[str, str]]) -> Set[str]:
    """Keys to keep: the newest ``keep_last`` plus the best (which is ``keep_last`` keys if it is among them)."""
    ordered = sorted(records, key=order_key)
    keep = {r["key"] for r in ordered[-max(1, keep_last):]}
    b = best(ordered, best_metric)
    if b is not None:
        keep.add(b["key"])
    return keep
