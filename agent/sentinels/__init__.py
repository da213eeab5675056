"""The agent's resource sentinels on the box: disk, memory, GPU, zombie VRAM; they report only."""

from __future__ import annotations

from .alert import Alert
from .runner import SentinelRunner, build_sentinels
from .zombie import reap_candidates

__all__ = ["Alert", "SentinelRunner", "build_sentinels", "reap_candidates"]
