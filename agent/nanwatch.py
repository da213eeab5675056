"""The NaN policy on the box: counts consecutive non-finite loss reports from the log and from the helper.

The log is read through ``WatchedLog`` (every line that reports a loss is one report); the helper's
progress.json carries its own count of consecutive non-finite ``report()`` calls (the helper writes at
most twice a second, so the agent could not count them itself). After ``after`` consecutive reports from
one source the attempt is stopped and classified ``nan``; a trainer that recovers before that is warned
about only.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional, Tuple

from rgt.shared.states import FailureClass, RunState
from rgt.shared.status import Progress, Sentinel

from .progress import LogProgress

BANNER = "=== rgt attempt "


class NanWatch:
    """Consecutive non-finite loss reports, per source ("log", "helper"), for the current attempt."""

    def __init__(self, after: int) -> None:
        self.after = max(1, int(after))
        self.recovered: Optional[str] = None  # the last "went non-finite, then recovered" warning
        self.reset()

    def reset(self) -> None:
        """A new attempt: nothing seen yet (a recovery warning of the previous attempt goes too)."""
        self.streaks: Dict[str, int] = {"log": 0, "helper": 0}
        self.first: Dict[str, Tuple[Optional[int], float, str]] = {}  # source -> (step, wall time, evidence)
        self.seen_any = False
        self.recovered = None
        self._helper_at: Optional[float] = None

    # -- reports -------------------------------------------------------------------------------------
    def report(self, source: str, finite: bool, step: Optional[int], evidence: str, now: float,
               streak: Optional[int] = None, first_step: Optional[int] = None) -> None:
        """One loss report; ``streak`` is the source's own count when it keeps one (the helper)."""
        before = self.streaks.get(source, 0)
        if finite:
            if before:
                s0 = self.first.get(source, (None, now, ""))[0]
                self.recovered = (f"loss was non-finite for {before} consecutive report(s) from step {s0} "
                                  f"({source}), then recovered; only warned (nan_after {self.after})")
            self.streaks[source] = 0
            self.first.pop(source, None)
            return
        self.seen_any = True
        self.streaks[source] = streak if streak is not None else before + 1
        if source not in self.first or before == 0:
            self.first[source] = (first_step if first_step is not None else step, now, evidence[:300])

    def poll_helper(self, status_dir: str, now: float) -> None:
        """Read progress.json once per tick; a new report (new updated_at) counts."""
        try:
            with open(os.path.join(status_dir, "progress.json"), "rb") as f:
                d = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(d, dict) or d.get("updated_at") == self._helper_at:
            return
        self._helper_at = d.get("updated_at")
        bad = "loss" in (d.get("nonfinite") or ())
        if not bad and d.get("loss") is None:
            return  # this report carries no loss
        step = d.get("step") if isinstance(d.get("step"), int) else None
        streak = d.get("nonfinite_streak")
        streak = streak if isinstance(streak, int) and not isinstance(streak, bool) and streak >= 0 else None
        first = d.get("nonfinite_first_step")
        first = first if isinstance(first, int) and not isinstance(first, bool) else None
        if bad and streak == 0:
            streak = None
        self.report("helper", not bad, step, f"helper report at step {step}: loss non-finite", now,
                    streak=streak if bad else None, first_step=first)

    # -- what the agent reads --------------------------------------------------------------------------
    def streak(self) -> Tuple[int, Optional[str]]:
        """The longest current streak and its source."""
        source = max(self.streaks, key=lambda k: self.streaks[k])
        n = self.streaks[source]
        return n, (source if n else None)

    def tripped(self) -> Optional[str]:
        """Evidence when a source has reached ``after`` consecutive non-finite reports, else None."""
        n, source = self.streak()
        return self.evidence(source) if source is not None and n >= self.after else None

    def evidence(self, source: Optional[str]) -> Optional[str]:
        """One line: how many reports, from which step, and the first report's own text."""
        if source is None or source not in self.first:
            return None
        step, _, text = self.first[source]
        return (f"loss non-finite for {self.streaks[source]} consecutive report(s) from step {step} "
                f"({source}; nan_after {self.after}): {text}")

    def first_step(self) -> Optional[int]:
        """The step of the first non-finite report of the current streak.

        The helper's when it has one: the trainer's own global step. A step read from the log can lag
        (a bar's count printed beside the logged dict), and would exclude good checkpoints.
        """
        for source in ("helper", "log"):
            step = self.first.get(source, (None, 0.0, ""))[0]
            if step is not None:
                return step
        return None

    def first_at(self) -> Optional[float]:
        """Wall time the agent first saw the current streak."""
        times = [t for _, t, _ in self.first.values()]
        return min(times) if times else None

    def warning(self) -> Optional[str]:
        """A status line while a streak is below ``after``, or after a recovery."""
        n, source = self.streak()
        if source is not None and n < self.after:
            step = self.first[source][0]
            return f"loss non-finite for {n} of {self.after} consecutive report(s) from step {step} ({source})"
        return self.recovered


class WatchedLog(LogProgress):
    """LogProgress that feeds every loss it parses to a NanWatch and starts each attempt from nothing."""

    def __init__(self, watch: NanWatch, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watch = watch

    def feed(self, line: str, now: float) -> bool:
        """Parse one line; each new loss report is one report (a NaN prints as a number that is not finite).

        LogProgress counts reports itself where it can (``loss_reports``: a bar's redraws of the same
        loss count once); otherwise every line that carries a loss is one.
        """
        if line.startswith(BANNER):
            self.progress = Progress()  # the previous attempt's step and loss do not linger
            if hasattr(self, "nonfinite_streak"):
                self.nonfinite_streak = 0
            self.watch.streaks["log"] = 0
            self.watch.first.pop("log", None)
        p = self.progress
        reports = getattr(self, "loss_reports", None)
        before, p.loss = p.loss, None
        changed = super().feed(line, now)
        p = self.progress
        loss, p.loss = p.loss, (before if p.loss is None else p.loss)
        if reports is not None:
            if self.loss_reports != reports:
                streak = getattr(self, "nonfinite_streak", 0)
                self.watch.report("log", not streak, p.step, line.strip(), now, streak=streak or None)
        elif isinstance(loss, (int, float)):
            self.watch.report("log", math.isfinite(loss), p.step, line.strip(), now)
        return changed

def police(watch: NanWatch, sup: Any, alerts: Dict[str, Sentinel]) -> None:
    """K consecutive non-finite losses stop the trainer by its group (classified ``nan``); fewer only warn."""
    n, _ = watch.streak()
    warning = watch.warning()
    if warning:
        alerts["nan"] = Sentinel("nan", "warn", float(n), float(watch.after), warning)
    elif alerts.get("nan") is not None and alerts["nan"].level == "warn":
        del alerts["nan"]
    evidence = watch.tripped()
    if evidence and sup is not None and sup.state in (RunState.STARTING, RunState.RUNNING) and not sup.forced:
        alerts["nan"] = Sentinel("nan", "critical", float(n), float(watch.after),
                                 f"the trainer was stopped: {evidence}")
        sup.stop_for(FailureClass.NAN, evidence)


def exclude_after_nan(watch: NanWatch, pipeline: Any, since: Optional[float], tick_s: float, sup: Any) -> None:
    """Checkpoints this attempt wrote from the first non-finite step on are no resume target (kept on disk).

    By step where both are known, else by time: from a tick before the agent saw the first report.
    """
    if pipeline is None:
        return
    first_step, first_at = watch.first_step(), watch.first_at()
    flagged = []
    for r in pipeline.records():
        mtime = (r.get("mtime_ns") or 0) / 1e9
        if r.get("nan_suspect") or (since is not None and mtime < since - 1.0):
            continue  # already flagged, or an earlier attempt's checkpoint
        step = r.get("step")
        if step is not None and first_step is not None:
            after = step >= first_step
        else:
            after = first_at is not None and mtime >= first_at - tick_s
        if after:
            pipeline.book.update(r["key"], nan_suspect=True)
            flagged.append(r["path"])
    if flagged and sup is not None:
        sup.journal.append("ckpt_after_nan", paths=flagged, first_step=first_step,
                           message="written after the loss went non-finite: not a resume target")
