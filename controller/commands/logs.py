"""`rgt logs [RUN] [-f] [-n N]` (laptop): the trainer's log from the box; -f streams across rotations."""

from __future__ import annotations

import os
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
    n = str(max(0, lines))
    if not follow:
        res = transport.run(["tail", "-n", n, "--", path])
        if res.rc != 0:
            raise RgtError(f"no log at {path} on {rec.host} yet")
        sys.stdout.buffer.write(res.out)
        return
    # -F follows the name across the waiter's rotations; one session for the whole stream.
    proc = transport.popen(["tail", "-n", n, "-F", "--", path])
    try:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    except BrokenPipeError:  # `rgt logs -f | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    finally:
        proc.terminate()
        proc.wait()
    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    if proc.returncode == 255:
        raise TransportError(f"transport unavailable: {rec.host}: {err.splitlines()[-1] if err else 'ssh ended'}")
    if proc.returncode not in (0, -15):
        raise RgtError(f"following {path} on {rec.host} ended (exit {proc.returncode}): {err[-200:]}")
