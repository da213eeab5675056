"""Checkpoint cadence (in the trainer's process, via the helper): Young/Daly from the save cost and the MTBF."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Optional

DEFAULT_MTBF_S = 3 * 3600.0
FIRST_SAVE_S = 60.0  # the interval before a save has measured C


def young_interval_s(cost_s: float, mtbf_s: float) -> float:
    """Young's checkpoint interval: sqrt(2 C M)."""
    return math.sqrt(2.0 * cost_s * mtbf_s)


def daly_interval_s(cost_s: float, mtbf_s: float) -> float:
    """Daly's higher-order interval, sqrt(2CM)(1 + sqrt(C/2M)/3 + C/(9*2M)) - C, for C < 2M; else M."""
    if cost_s >= 2.0 * mtbf_s:
        return mtbf_s
    ratio = cost_s / (2.0 * mtbf_s)
    return young_interval_s(cost_s, mtbf_s) * (1.0 + math.sqrt(ratio) / 3.0 + ratio / 9.0) - cost_s


class Cadence:
    """Turns the interval in seconds into steps, from the measured seconds per step (rounded down)."""

    def __init__(self, save_every_s: Optional[float], mtbf_s: float, restarts: int,
                 run_started_at: Optional[float], clock: Callable[[], float] = time.monotonic) -> None:
        self.save_every_s = save_every_s
        self.mtbf_default_s = mtbf_s
        self.restarts = restarts
        self.run_started_at = run_started_at
        self.cost_s: Optional[float] = None  # blocking snapshot + background write, smoothed
        self.step_s: Optional[float] = None
        self._clock = clock
        self._last: Optional[tuple] = None  # (step, clock) of the previous should_save call
        self.ref_step: Optional[int] = None  # the step of the last save, or the first step seen

    def measured(self, cost_s: float) -> None:
        """Feed one save's cost."""
        self.cost_s = cost_s if self.cost_s is None else 0.5 * (self.cost_s + cost_s)

    def saved(self, step: int) -> None:
        """The count of steps restarts at a save."""
        self.ref_step = step

    def mtbf_s(self) -> float:
        """The configured MTBF, lowered to the observed one when this run has restarted."""
        m = self.mtbf_default_s
        if self.restarts > 0 and self.run_started_at is not None:
            m = min(m, max(60.0, (time.time() - self.run_started_at) / self.restarts))
        return m

    def current(self) -> Dict[str, Any]:
        """The interval in seconds and steps, and where it came from."""
        mtbf = self.mtbf_s()
        if self.save_every_s is not None:
            interval, source = self.save_every_s, "RGT_SAVE_EVERY_S"
        elif self.cost_s is None:
            interval, source = FIRST_SAVE_S, "first save (cost not measured yet)"
        else:
            interval, source = daly_interval_s(self.cost_s, mtbf), "daly"
        steps = max(1, int(interval // self.step_s)) if self.step_s else None
        return {"interval_s": interval, "every_steps": steps, "cost_s": self.cost_s, "mtbf_s": mtbf,
                "step_s": self.step_s, "source": source}

    def due(self, step: int) -> bool:
        """Record this step's time; True when the interval in steps has passed since the last save."""
        now = self._clock()
        if self._last is not None and step > self._last[0]:
            dt = (now - self._last[1]) / (step - self._last[0])
            self.step_s = dt if self.step_s is None else 0.8 * self.step_s + 0.2 * dt
        self._last = (step, now)
        if self.ref_step is None:
            self.ref_step = step
        steps = self.current()["every_steps"]
        return steps is not None and step - self.ref_step >= steps
