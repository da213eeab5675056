"""Progress on the box: incremental tail of trainer.log through patterns, or the helper's progress.json."""

from __future__ import annotations

import json
import math
import os
import re
from typing import Dict, List, Optional, Pattern

from rgt.shared.status import Progress

# Zero-code defaults (design section 7); a spec's progress_patterns replace them by key.
DEFAULT_PATTERNS: Dict[str, str] = {
    "step": r"\bstep[ =:]+(\d+)(?:\s*/\s*(\d+))?",
    "loss": r"\bloss[ =:]+([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)|NaN)",
    "tqdm": r"(\d+)/(\d+) \[",
    "hf": r"\{'loss': ",
}
_HF_PAIR = re.compile(r"'(\w+)': ([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))")
TAIL_LINES = 200
MAX_READ_BYTES = 4 * 1024 * 1024


def _num(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


class LogProgress:
    """Reads only new bytes of the log each tick and keeps the last lines for the classifier."""

    def __init__(self, path: str, patterns: Optional[Dict[str, str]] = None) -> None:
        self.path = path
        merged = dict(DEFAULT_PATTERNS)
        merged.update(patterns or {})
        self.patterns: Dict[str, Pattern[str]] = {k: re.compile(v) for k, v in merged.items()}
        self.progress = Progress()
        self.tail: List[str] = []
        self.nan_seen = False
        self._ino: Optional[int] = None
        self._offset = 0
        self._partial = b""

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
        self._partial = lines.pop()
        changed = False
        for raw in lines:
            # tqdm redraws with carriage returns: the last segment is the current state.
            line = raw.decode("utf-8", "replace").split("\r")[-1]
            self.tail.append(line)
            changed |= self.feed(line, now)
        del self.tail[:-TAIL_LINES]
        return changed

    def feed(self, line: str, now: float) -> bool:
        """Apply the patterns to one line."""
        p, changed = self.progress, False
        if line.startswith("=== rgt attempt "):
            self.tail = [line]
            return False
        hf = self.patterns["hf"].search(line)
        if hf:
            for key, value in _HF_PAIR.findall(line[hf.start():]):
                number = _num(value)
                if key == "loss":
                    p.loss = number
                elif number is not None:
                    p.metrics[key] = number
            changed = True
        m = self.patterns["step"].search(line)
        if m:
            p.step = int(m.group(1))
            if m.lastindex and m.lastindex >= 2 and m.group(2):
                p.total_steps = int(m.group(2))
            changed = True
        else:
            t = self.patterns["tqdm"].search(line)
            if t:
                p.step, p.total_steps = int(t.group(1)), int(t.group(2))
                changed = True
        m = self.patterns["loss"].search(line)
        if m:
            p.loss = _num(m.group(1).lower())
            changed = True
        if p.loss is not None and not math.isfinite(p.loss):
            self.nan_seen = True
        if changed:
            p.updated_at, p.source = now, "log"
        return changed


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
    if d.get("nonfinite"):
        metrics["_nonfinite"] = list(d["nonfinite"])  # the helper writes NaN/inf as null and names them here
    return Progress(
        step=d.get("step"), total_steps=d.get("total_steps"), loss=d.get("loss"), metrics=metrics,
        phase=d.get("phase"), updated_at=d.get("updated_at"), source="helper",
    )
