"""`pyz stop RUN_DIR` on the box: asks the live agent to stop the run, or stops it itself when no agent runs."""

from __future__ import annotations

import os
import signal
import time

from rgt.shared.atomic import atomic_write_json
from rgt.shared.journal import Journal
from rgt.shared.paths import RunPaths
from rgt.shared.spec import RunSpec

from . import procs
from .cli import request_stop
from .runner import read_record


def _agent_holder(paths: RunPaths):
    """(pid, start_time) of the agent holding agent.lock, or None when no agent runs."""
    fd, words = procs.try_flock(paths.lock)
    if fd is not None:
        os.close(fd)
        return None
    try:
        return int(words[0]), float(words[1])
    except (IndexError, ValueError):
        return (0, 0.0)


def main(paths: RunPaths, reason: str, wait_s: float) -> int:
    """Stop the run; prints one line saying what happened."""
    marker = paths.existing_marker()
    if marker:
        print(f"run {paths.run_id} already ended ({marker}); nothing to stop")
        return 0
    request_stop(paths, reason)
    holder = _agent_holder(paths)
    if holder is not None:
        pid, started = holder
        if procs.is_same_process(pid, started):
            os.kill(pid, signal.SIGUSR2)  # wake it now rather than at its next tick
        deadline = time.monotonic() + wait_s
        while wait_s and time.monotonic() < deadline and not paths.existing_marker():
            time.sleep(0.1)
        print(f"stop requested; agent pid {pid} is stopping run {paths.run_id}")
        return 0
    return _stop_without_agent(paths, reason)


def _stop_without_agent(paths: RunPaths, reason: str) -> int:
    """No agent is alive: stop the tracked trainer ourselves and write the marker."""
    spec = RunSpec.load(paths.spec)
    rec = read_record(paths.trainer_record) or {}
    outcome = "gone"
    if rec.get("pid"):
        tag = f"RGT_AGENT_TAG={rec.get('tag')}".encode()
        outcome = procs.stop_group(rec["pid"], rec.get("start_time") or 0.0, tag, spec.stop_timeout_s)
    Journal(paths.journal).append("stopped_without_agent", reason=reason, trainer=outcome)
    atomic_write_json(paths.marker("STOPPED"), {
        "run_id": spec.run_id, "state": "stopped", "reason": f"{reason} (no agent was running; trainer {outcome})",
        "exit_code": None, "signal": None, "attempt": rec.get("attempt"), "at": time.time(),
        "manifest_sha256": None, "failure": None,
    })
    print(f"no agent was running; trainer {outcome}; run {paths.run_id} marked STOPPED")
    return 0
