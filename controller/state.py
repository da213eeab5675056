"""Where the controller keeps its own state on the laptop (design section 3)."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """$RGT_STATE_DIR, else $XDG_STATE_HOME/rgt, else ~/.local/state/rgt; created 0700."""
    env = os.environ.get("RGT_STATE_DIR")
    if env:
        path = Path(env)
    else:
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        path = Path(base) / "rgt"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def local_box_root() -> str:
    """The directory that plays the box for `rgt up local`: $RGT_ROOT or ~/.local/share/rgt/box."""
    env = os.environ.get("RGT_ROOT")
    if env:
        return os.path.abspath(env)
    return os.path.join(os.path.expanduser("~"), ".local", "share", "rgt", "box")
