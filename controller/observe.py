"""Reading a run's status from the laptop: one round trip, staleness by the box's clock, unreachable views."""

from __future__ import annotations

import time
from typing import Any, Dict, NamedTuple, Optional

from rgt.shared.errors import TransportError
from rgt.shared.status import Status, parse_status

from .registry import Registry, RunRecord
from .transport.base import Transport


class Observation(NamedTuple):
    """What one poll saw: the status (or None), how old it is by the box's clock, and the view."""

    status: Optional[Status]
    raw: Optional[Dict[str, Any]]
    age_s: Optional[float]
    view: str  # a RunState value, "stale", "no-status" or "unreachable"
    error: Optional[str] = None


def poll(transport: Transport, rec: RunRecord) -> Observation:
    """Read status.json and `date` in one round trip; never raises for an unreachable box."""
    try:
        raw, box_now = transport.read_with_clock(f"{rec.run_dir}/status.json")
    except TransportError as e:
        last = rec.last_status or {}
        return Observation(None, last or None, None, "unreachable", str(e))
    if raw is None:
        return Observation(None, None, None, "no-status")
    status = parse_status(raw, f"{rec.host}:{rec.run_dir}/status.json")
    age = max(0.0, box_now - (status.updated_at or 0.0))  # the clock is read just before the file
    view = status.state
    terminal = status.state in ("succeeded", "failed", "stopped")
    if not terminal and age > 3 * status.tick_s:
        view = "stale"
    return Observation(status, status.to_dict(), age, view)


def remember(registry: Registry, rec: RunRecord, obs: Observation) -> None:
    """Keep the last status seen, so an unreachable box still shows the last known state."""
    if obs.status is not None and (registry.dir / f"{rec.run_id}.json").exists():
        rec.last_status = obs.raw
        rec.last_seen_at = time.time()
        try:
            registry.save(rec)
        except OSError:
            pass  # a full laptop disk must not turn a good poll into an error
