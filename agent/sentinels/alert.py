"""What a sentinel on the box reports: one finding per name, with a level, a code for the agent and data."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from rgt.shared.status import Sentinel

LEVELS = ("ok", "warn", "critical")
_RANK = {name: i for i, name in enumerate(LEVELS)}


class Alert:
    """One finding; the level says how bad, ``code`` says what the agent may do about it."""

    __slots__ = ("name", "level", "value", "limit", "message", "code", "data")

    def __init__(self, name: str, level: str = "ok", value: Optional[float] = None,
                 limit: Optional[float] = None, message: Optional[str] = None,
                 code: Optional[str] = None, data: Optional[Dict[str, Any]] = None) -> None:
        if level not in _RANK:
            raise ValueError(f"alert level must be one of {LEVELS}, not {level!r}")
        self.name = name
        self.level = level
        self.value = value
        self.limit = limit
        self.message = message
        self.code = code
        self.data = data if data is not None else {}

    def to_status(self) -> Sentinel:
        """The status.json form (code and data stay on the box: the journal gets them)."""
        return Sentinel(name=self.name, level=self.level, value=self.value, limit=self.limit,
                        message=self.message)

    def to_dict(self) -> Dict[str, Any]:
        """Every field, for the journal."""
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        code = f" code={self.code}" if self.code else ""
        return f"Alert({self.name} {self.level}{code}: {self.message})"


def worst(levels: List[str]) -> str:
    """The most severe of some levels ("ok" for none)."""
    return max(levels, key=lambda lv: _RANK[lv], default="ok")


def level_for(frac: Optional[float], warn_frac: float, crit_frac: float) -> str:
    """Map a used fraction to a level; unknown is ok (never an alarm on a missing reading)."""
    if frac is None:
        return "ok"
    if frac >= crit_frac:
        return "critical"
    if frac >= warn_frac:
        return "warn"
    return "ok"


def human_bytes(n: Optional[float]) -> str:
    """1536 -> '1.5 KiB'; None -> '?'."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
