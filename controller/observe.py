"""Reading a run's status from the laptop: one round trip, staleness by the box's clock, unreachable views.

What the box sent passes controller.boundary first: capped in bytes, typed against the schema, for this
run id. ``Observation.raw`` is that validated data (for --json and the registry); ``status`` is the same
with every string cleaned for a terminal.
"""

from __future__ import annotations

import time
from typing import Any, Dict, NamedTuple, Optional

from rgt.shared.errors import TransportError
from rgt.shared.status import Status

from . import boundary
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
        raw, box_now = transport.read_with_clock(f"{rec.run_dir}/status.json",
                                                 max_bytes=boundary.MAX_STATUS_BYTES + 1)
    except TransportError as e:
        last = boundary.stored_status(rec.last_status) or {}
        return Observation(None, last or None, None, "unreachable", str(e))
    if raw is None:
        return Observation(None, None, None, "no-status")
    checked = boundary.status_from_box(raw, rec.run_id, f"{rec.host}:{rec.run_dir}/status.json")
    data = checked.to_dict()
    status = Status.from_dict(boundary.shown(data))
    age = max(0.0, box_now - (status.updated_at or 0.0))  # the clock is read just before the file
    view = status.state
    terminal = status.state in ("succeeded", "failed", "stopped")
    if not terminal and age > 3 * status.tick_s:
        view = "stale"
    return Observation(status, data, age, view)


def remember(registry: Registry, rec: RunRecord, obs: Observation) -> None:
    """Keep the last status seen, so an unreachable box still shows the last known state."""
    if obs.status is not None and (registry.dir / f"{rec.run_id}.json").exists():
        rec.last_status = obs.raw
        rec.last_seen_at = time.time()
        try:
            registry.save(rec)
        except OSError:
            pass  # a full laptop disk must not turn a good poll into an error
