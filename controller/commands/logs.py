"""`rgt logs [RUN] [-f] [-n N] [--raw]` (laptop): the trainer's log from the box; -f streams across rotations.

The bytes are the box's: on a terminal they pass controller.boundary.TermFilter (colours and carriage
returns stay, every other control sequence goes); raw only into a pipe or file, or with --raw.
"""

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
@click.option("--raw", is_flag=True, help="Write the box's bytes unfiltered, even to a terminal.")
@click.pass_obj
def cli(app, run, follow, lines, agent, raw) -> None:
    """Print the last lines of the run's log."""
    from rgt.controller.boundary import TermFilter, box_line
    from rgt.shared.errors import RgtError, TransportError

    filt = None if raw or not sys.stdout.isatty() else TermFilter()

    def write(chunk: bytes, final: bool = False) -> None:
        if filt is None:
            sys.stdout.buffer.write(chunk)
        else:
            sys.stdout.write(filt.feed(chunk, final))

    rec = app.resolve_run(run)
    transport = app.transport_of(rec)
    path = f"{rec.run_dir}/logs/{'agent.log' if agent else 'trainer.log'}"
    n = str(max(0, lines))
    if not follow:
        res = transport.run(["tail", "-n", n, "--", path])
        if res.rc != 0:
            raise RgtError(f"no log at {path} on {rec.host} yet")
        write(res.out, final=True)
        return
    # -F follows the name across the waiter's rotations; one session for the whole stream.
    proc = transport.popen(["tail", "-n", n, "-F", "--", path])
    try:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            write(chunk)
            sys.stdout.flush()
        write(b"", final=True)  # a sequence cut off at the very end is shown escaped, not lost
    except BrokenPipeError:  # `rgt logs -f | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    finally:
        proc.terminate()
        proc.wait()
    err = proc.stderr.read()[-4096:].decode(errors="replace").strip() if proc.stderr else ""
    if proc.returncode == 255:
        last = box_line(err.splitlines()[-1]) if err else "ssh ended"
        raise TransportError(f"transport unavailable: {rec.host}: {last}")
    if proc.returncode not in (0, -15):
        raise RgtError(f"following {path} on {rec.host} ended (exit {proc.returncode}): {box_line(err[-200:])}")
