"""`rgt logs [RUN] [-f] [-n N]` (laptop): the trainer's log from the box; -f streams across rotations."""

from __future__ import annotations

import sys

import click

from . import run_argument


@click.command()
@run_argument
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines.")
@click.option("-n", "lines", type=int, default=50, show_default=True, help="How many last lines.")
@click.option("--agent", is_flag=True, help="The agent's own log instead of the trainer's.")
@click.pass_obj
def cli(app, run, follow, lines, agent) -> None:
    """Print the last lines of the run's log."""
    from rgt.shared.errors import RgtError, TransportError

    rec = app.resolve_run(run)
    transport = app.transport_of(rec)
    path = f"{rec.run_dir}/logs/{'agent.log' if agent else 'trainer.log'}"
    argv = ["tail", "-n", str(max(0, lines)), "-F" if follow else "--", path] if follow else [
        "tail", "-n", str(max(0, lines)), "--", path]
    if not follow:
        res = transport.run(argv)
        if res.rc != 0:
            if res.rc == 255:
                raise TransportError(f"transport unavailable: {res.err.decode(errors='replace').strip()[:200]}")
            raise RgtError(f"no log at {path} on {rec.host} yet")
        sys.stdout.buffer.write(res.out)
        return
    proc = transport.popen(argv)
    try:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    finally:
        proc.terminate()
        proc.wait()
