"""Progress on the box: incremental tail of trainer.log through patterns, or the helper's progress.json."""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional

from rgt.shared.status import Progress

from . import progformats

TAIL_LINES = 200
MAX_READ_BYTES = 4 * 1024 * 1024
MAX_PARTIAL_BYTES = 64 * 1024  # a redraw is short; a line without end is cut to its last 64 KiB


class LogProgress:
    """Reads only new bytes of the log each tick and keeps the last lines for the classifier.

    For the NaN policy: ``progress.loss`` is float nan/inf when the trainer printed one (status.json shows
    null there and ``metrics.nonfinite_loss`` with the text), ``nonfinite_streak`` counts consecutive
    non-finite loss reports (a finite one resets it), ``loss_reports`` counts all of them, and ``nan_seen``
    stays set until the supervisor clears it. A report is a new (step, loss text) pair, so a bar's redraws
    of the same loss count once.
    """

    def __init__(self, path: str, patterns: Optional[Dict[str, str]] = None) -> None:
        self.path = path
        self.user = progformats.compile_user(patterns)
        self.progress = Progress()
        self.tail: List[str] = []
        self.nan_seen = False
        self.nonfinite_streak = 0
        self.loss_reports = 0
        self._last_report: Optional[tuple] = None
        self._lock = progformats.BarLock()
        self._state: Dict[str, object] = {}
        self._ino: Optional[int] = None
        self._offset = 0
        self._partial = b""
        self._fed_partial: Optional[str] = None

    def poll(self, now: float) -> bool:
        """Consume what was appended since the last call; True when progress changed."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        if st.st_ino != self._ino or st.st_size < self._offset:
            # Rotated or truncated: start over on the new file (the old one's tail was read already).
            self._ino, self._offset, self._partial = st.st_ino, 0, b""
        if st.st_size == self._offset:
            return False
        with open(self.path, "rb") as f:
            f.seek(max(self._offset, st.st_size - MAX_READ_BYTES))
            data = f.read(st.st_size - self._offset)
        self._offset = st.st_size
        lines = (self._partial + data).split(b"\n")
        partial = lines.pop()
        changed = False
        for raw in lines:
            # tqdm redraws with carriage returns: the last segment is the current state.
            line = raw.decode("utf-8", "replace").split("\r")[-1]
            self.tail.append(line)
            if line != self._fed_partial:
                changed |= self.feed(line, now)
            self._fed_partial = None
        del self.tail[:-TAIL_LINES]
        if b"\r" in partial:
            # A bar that redraws without newlines (HF's, to a pipe): each redraw is one write, so the
            # newest one is read now; it is not read again when its line ends.
            segments = partial.split(b"\r")
            if not segments[-1].rstrip().endswith(b"]"):
                segments = segments[:-1]  # still being written (a tqdm redraw ends with "]")
            text = next((s for s in reversed(segments) if s.strip()), b"").decode("utf-8", "replace")
            if text and text != self._fed_partial:
                changed |= self.feed(text, now)
                self._fed_partial = text
            partial = b"\r" + partial.rpartition(b"\r")[2]
        self._partial = partial[-MAX_PARTIAL_BYTES:]
        return changed

    def feed(self, line: str, now: float) -> bool:
        """Apply the formats and the user's patterns to one segment."""
        p = self.progress
        if line.startswith("=== rgt attempt "):
            self.tail = [line]
            self._lock, self._state = progformats.BarLock(), {}  # a new attempt may start from a checkpoint
            return False
        got = progformats.parse(line, self.user, self._lock, self._state)
        if not got.said():
            return False
        if got.step is not None:
            p.step = got.step
        if got.total is not None:
            p.total_steps = got.total
        p.metrics.update(got.metrics)
        if got.loss is not None:
            p.loss = got.loss
            self._count_loss(got.loss, got.loss_text)
        p.updated_at, p.source = now, "log"
        return True

    def _count_loss(self, loss: float, text: Optional[str]) -> None:
        p = self.progress
        report = (p.step, text)
        finite = math.isfinite(loss)
        if finite:
            p.metrics.pop("nonfinite_loss", None)
        else:
            self.nan_seen = True
            p.metrics["nonfinite_loss"] = (text or str(loss)).lower()
        if report == self._last_report:
            return
        self._last_report = report
        self.loss_reports += 1
        self.nonfinite_streak = 0 if finite else self.nonfinite_streak + 1


def read_helper_progress(status_dir: str) -> Optional[Progress]:
    """The helper's progress.json as a Progress, or None when absent or unreadable (mid-write)."""
    try:
        with open(os.path.join(status_dir, "progress.json"), "rb") as f:
            d = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict):
        return None
    metrics = dict(d.get("metrics")) if isinstance(d.get("metrics"), dict) else {}
    if isinstance(d.get("last_save_step"), int) and not isinstance(d.get("last_save_step"), bool):
        metrics["last_save_step"] = d["last_save_step"]  # the integrations name each framework save
    if isinstance(d.get("nonfinite"), list) and "loss" in d["nonfinite"]:
        metrics["nonfinite_loss"] = "non-finite"  # written as null: nan or inf, the helper does not say which
    if d.get("nonfinite"):
        metrics["_nonfinite"] = list(d["nonfinite"])  # the helper writes NaN/inf as null and names them here
    return Progress(
        step=d.get("step"), total_steps=d.get("total_steps"), loss=d.get("loss"), metrics=metrics,
        phase=d.get("phase"), updated_at=d.get("updated_at"), source="helper",
    )
