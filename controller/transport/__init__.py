"""How the laptop reaches a box: the Transport seam and its implementations (local, ssh)."""

from .base import BoxResult, Transport

__all__ = ["BoxResult", "Transport"]
