"""`rgt wait [RUN]` (laptop): block until the run ends; exit 0 succeeded, 5 failed or stopped, 3 unreachable."""

from __future__ import annotations

import sys
import time

import click

from . import run_argument

UNREACHABLE_TRIES = 3


def _job_ended(transport, rec):
    """The end state of the run's scheduler job (TIMEOUT, CANCELLED, ...), or None while it may go on."""
    from rgt.controller.slurmview import RUNNING, WAITING, job_of, view_for

    if job_of(rec) is None:
        return None  # not a scheduler run: a stale agent may come back
    sched = view_for(transport, rec)
    state = (sched or {}).get("state")
    if not state or state in WAITING | RUNNING or sched.get("error"):
        return None
    return state


@click.command()
@run_argument
@click.option("--timeout-s", type=float, default=None, help="Give up (exit 1) after this long.")
@click.pass_obj
def cli(app, run, timeout_s) -> None:
    """Wait for RUN to reach succeeded, failed or stopped."""
    from rgt.controller.observe import poll, remember

    rec = app.resolve_run(run)
    transport = app.transport_of(rec)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    misses = 0
    while True:
        obs = poll(transport, rec)
        remember(app.registry, rec, obs)
        if obs.view == "unreachable":
            misses += 1
            if misses >= UNREACHABLE_TRIES:
                app.info(f"{rec.run_id}: transport unavailable ({obs.error}); the run may still be going")
                sys.exit(3)
        else:
            misses = 0
        if obs.view in ("stale", "no-status"):
            ended = _job_ended(transport, rec)
            if ended:
                app.info(f"{rec.run_id}: its slurm job ended {ended} and the agent left no completion marker")
                sys.exit(5)
        if obs.status is not None and obs.status.state in ("succeeded", "failed", "stopped"):
            app.info(f"{rec.run_id}: {obs.status.state}" + (
                f" ({obs.status.trainer.last_failure.class_}: {obs.status.trainer.last_failure.evidence})"
                if obs.status.state == "failed" and obs.status.trainer.last_failure else ""))
            sys.exit(0 if obs.status.state == "succeeded" else 5)
        if deadline is not None and time.monotonic() > deadline:
            app.info(f"{rec.run_id}: still {obs.view} after {timeout_s:.0f}s")
            sys.exit(1)
        time.sleep(min(obs.status.tick_s if obs.status else 1.0, 2.0) if misses == 0 else 2.0 * misses)
