"""`pyz probe RUN_DIR` on the box: who holds the run right now (agent lock, pid and start time), as one JSON line.

`rgt resume` and `rgt up` decide from this, never from a heartbeat's age: a live agent may be slow to
write, and a dead one leaves a fresh-looking status for a few ticks.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from rgt.shared.paths import RunPaths

from . import procs
from .runner import read_record


def _holder(path: str) -> Dict[str, Any]:
    """The flock's holder as written into the file ("pid start_time"), and whether that process lives."""
    if not os.path.exists(path):
        return {"held": False, "pid": None, "start_time": None, "alive": False}
    fd, words = procs.try_flock(path)
    held = fd is None
    if fd is not None:
        words = os.pread(fd, 128, 0).decode(errors="replace").split()  # the last holder's note
        os.close(fd)  # nobody held it: closing drops the lock we just took
    pid: Optional[int] = None
    started: Optional[float] = None
    try:
        pid, started = int(words[0]), float(words[1])
    except (IndexError, ValueError):
        pass
    # Held: the kernel says a process has it open. The note names it (an agent writes its pid and start);
    # when free, the note names the last holder, for the message.
    return {"held": held, "pid": pid, "start_time": started,
            "alive": held and pid is not None and procs.is_same_process(pid, started)}


def probe(paths: RunPaths) -> Dict[str, Any]:
    """The agent lock, the waiter lock, the trainer record and its end, and the marker."""
    rec = read_record(paths.trainer_record) or {}
    ex = read_record(paths.exit) or {}
    waiter = _holder(os.path.join(paths.root, "waiter.lock"))
    trainer_alive = bool(rec.get("pid")) and procs.is_same_process(rec.get("pid"), rec.get("start_time"))
    ended = ex if ex.get("attempt") is not None and ex.get("attempt") == rec.get("attempt") else {}
    return {
        "run_id": paths.run_id, "marker": paths.existing_marker(), "agent": _holder(paths.lock),
        "waiter_alive": waiter["held"],
        "trainer": {"attempt": rec.get("attempt"), "pid": rec.get("pid"), "alive": trainer_alive,
                    "incarnation_matches": rec.get("incarnation") in (None, procs.incarnation())},
        "ended": {"exit_code": ended.get("exit_code"), "signal": ended.get("signal")} if ended else None,
    }


def main(paths: RunPaths) -> int:
    """Print the probe as one JSON line."""
    print(json.dumps(probe(paths), sort_keys=True))
    return 0
