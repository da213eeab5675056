"""`rgt resume [RUN]` (laptop): start an agent when none holds the run; it adopts a live trainer or resumes."""

from __future__ import annotations

import click

from . import run_argument


@click.command()
@run_argument
@click.option("--heartbeat-timeout-s", type=float, default=60.0, show_default=True)
@click.pass_obj
def cli(app, run, heartbeat_timeout_s) -> None:
    """Resume an interrupted, failed or stopped run; a DONE run is never rerun.

    Asks the box whether an agent holds the run (its lock, pid and start time), never the heartbeat's
    age, and says what it found and what the new agent did.
    """
    from rgt.controller.launch import resume

    rec = app.resolve_run(run)
    app.info(resume(app.transport_of(rec), rec, heartbeat_timeout_s))
