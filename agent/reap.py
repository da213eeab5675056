"""`pyz reap RUN_DIR` on the box: lists processes proven (by an open fd) to hold a GPU device; kills only on request."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import List, Set

from rgt.shared.journal import Journal
from rgt.shared.paths import RunPaths

from . import procs
from .runner import read_record
from .sentinels import reap_candidates


def _tracked(paths: RunPaths) -> Set[int]:
    """The run's own processes: the agent holding agent.lock, the waiter, the trainer."""
    pids: Set[int] = set()
    fd, note = procs.try_flock(paths.lock)
    if fd is not None:
        os.close(fd)
    elif note and note[0].isdigit():
        pids.add(int(note[0]))
    rec = read_record(paths.trainer_record) or {}
    pids.update(p for p in (rec.get("pid"), rec.get("waiter_pid")) if p)
    return pids


def main(paths: RunPaths, kill: List[str], min_age_s: float, device_prefix: str) -> int:
    """Print the candidates as JSON; with ``kill`` ("pid:start_time" as shown), SIGKILL exactly those."""
    cands = reap_candidates(own_pid=os.getpid(), tracked_pids=_tracked(paths), min_age_s=min_age_s,
                            device_prefix=device_prefix)
    if not kill:
        sys.stdout.write(json.dumps({"candidates": cands}) + "\n")
        return 0
    wanted = {}
    for item in kill:
        pid, _, started = item.partition(":")
        wanted[int(pid)] = float(started)
    killed, skipped = [], []
    proven = {c["pid"]: c for c in cands}
    for pid, started in sorted(wanted.items()):
        c = proven.get(pid)
        # Still a proven holder, and still the very process the user was shown.
        if c is None or abs(c["start_time"] - started) >= 0.05 or not procs.is_same_process(pid, started):
            skipped.append({"pid": pid, "why": "no longer a proven holder of the GPU (or a different process)"})
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(c)
        except ProcessLookupError:
            skipped.append({"pid": pid, "why": "already gone"})
    Journal(paths.journal).append("reap", killed=[c["pid"] for c in killed], skipped=[s["pid"] for s in skipped])
    sys.stdout.write(json.dumps({"killed": killed, "skipped": skipped}) + "\n")
    return 0
