"""`rgt stop [RUN]` (laptop): calls the agent archive's `stop` on the box (SIGTERM, grace, SIGKILL)."""

from __future__ import annotations

import click

from . import run_argument


@click.command()
@run_argument
@click.option("--wait-s", type=float, default=60.0, show_default=True, help="Wait this long for STOPPED.")
@click.option("--reason", default="stopped by the user with rgt stop")
@click.pass_obj
def cli(app, run, wait_s, reason) -> None:
    """Stop the run's trainer; the agent records STOPPED."""
    from rgt.controller.launch import ensure_pyz
    from rgt.shared.errors import RgtError

    rec = app.resolve_run(run)
    transport = app.transport_of(rec)
    from rgt.controller.slurm import stop as job_stop  # a run in a Slurm job: stop request, then scancel

    done = job_stop(transport, rec, reason, wait_s, app.info)
    if done is not None:
        app.info(done)
        return
    python = rec.python or transport.find_python(["python3", "python"])[0]
    archive = ensure_pyz(transport, rec.root)
    res = transport.run([python, "-I", archive, "stop", rec.run_dir, "--reason", reason, "--wait-s", str(wait_s)],
                        timeout_s=wait_s + 60)
    if res.rc != 0:
        raise RgtError(res.err.decode(errors="replace").strip().splitlines()[-1] if res.err.strip()
                       else f"stop failed on {rec.host} (exit {res.rc})")
    app.info(res.out.decode(errors="replace").strip())
