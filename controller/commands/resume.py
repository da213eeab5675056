"""`rgt resume [RUN]` (laptop): start the agent again; it adopts a live trainer or resumes from a checkpoint."""

from __future__ import annotations

import click

from . import run_argument


@click.command()
@run_argument
@click.option("--heartbeat-timeout-s", type=float, default=60.0, show_default=True)
@click.pass_obj
def cli(app, run, heartbeat_timeout_s) -> None:
    """Resume an interrupted, failed or stopped run; a DONE run is never rerun."""
    from rgt.controller.launch import resume

    rec = app.resolve_run(run)
    app.info(resume(app.transport_of(rec), rec, heartbeat_timeout_s))
