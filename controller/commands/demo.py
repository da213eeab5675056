"""`rgt demo` (laptop): the whole loop on this machine with a tiny CPU torch trainer; no GPU, no SSH."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from importlib.util import find_spec
from typing import Callable, Optional

import click

TERMINAL = ("succeeded", "failed", "stopped")
SHOW_EVERY_S = 3.0  # status lines at most this often while waiting: a slow machine waits long


def demo_trainer() -> str:
    """The demo trainer shipped in the agent package (located, not imported: it is the user's code here)."""
    spec = find_spec("rgt.agent.demo")
    assert spec is not None and spec.submodule_search_locations
    return os.path.join(list(spec.submodule_search_locations)[0], "train.py")


def _shown(rec, obs) -> str:
    from rgt.controller.commands.status import render

    lines = [x for x in render(rec, obs) if not x.lstrip().startswith(("GPU", "host", "sentinels"))]
    return "      " + "\n      ".join(lines[:3])


def watch(transport, rec, done: Callable, min_s: float, limit_s: float, show: bool = True) -> tuple:
    """Poll status until ``done(status)`` holds and ``min_s`` passed, or the run ended, or ``limit_s`` passed.

    Returns (status or None, seconds waited); with ``show``, prints a status view at most every SHOW_EVERY_S.
    """
    from rgt.controller.observe import poll

    start = time.monotonic()
    last_seq, shown_at, st = None, None, None
    while True:
        waited = time.monotonic() - start
        obs = poll(transport, rec)
        st = obs.status if obs.status is not None else st
        if show and obs.status is not None and obs.status.seq != last_seq and (
                shown_at is None or time.monotonic() - shown_at >= SHOW_EVERY_S or done(obs.status)
                or obs.status.state in TERMINAL):
            last_seq, shown_at = obs.status.seq, time.monotonic()
            click.echo(_shown(rec, obs))
        if st is not None and (st.state in TERMINAL or (done(st) and waited >= min_s)):
            return st, waited
        if waited >= limit_s:
            return st, waited
        time.sleep(0.5)


def _give_up(ctx, stop_cli, run_id: str, why: str) -> None:
    """Stop the demo's trainer (the demo must not leave it running on the laptop), then fail with ``why``."""
    from rgt.shared.errors import RgtError

    try:
        ctx.invoke(stop_cli, run=run_id, wait_s=0.0, reason="demo gave up")
    except (click.ClickException, RgtError) as e:
        why += f" (the stop failed too: {e}; `rgt stop {run_id}`)"
    raise click.ClickException(why)


@click.command()
@click.option("--steps", type=int, default=400, show_default=True)
@click.option("--watch-s", type=float, default=12.0, show_default=True,
              help="Show status at least this long; the stop never comes before the first verified checkpoint.")
@click.option("--phase-timeout-s", type=float, default=600.0, show_default=True,
              help="How long each phase may wait (a busy machine is slow) before the demo gives up.")
@click.pass_obj
def cli(app, steps, watch_s, phase_timeout_s) -> None:
    """Run the demo trainer under the agent, show status, stop it, pull and verify, and show what comes next."""
    from rgt.controller import launch
    from rgt.controller.commands.pull import cli as pull_cli
    from rgt.controller.commands.status import render
    from rgt.controller.commands.stop import cli as stop_cli
    from rgt.controller.observe import poll
    from rgt.shared.paths import generate_run_id
    from rgt.shared.spec import RunSpec

    if find_spec("torch") is None:  # located, not imported: importing torch here costs seconds for nothing
        raise click.ClickException("the demo needs torch in rgt's venv: run ./install.sh")
    ctx = click.get_current_context()
    code = tempfile.mkdtemp(prefix="rgt-demo-")
    try:
        shutil.copy(demo_trainer(), os.path.join(code, "train.py"))
        run_id = generate_run_id("demo")
        spec = RunSpec(run_id=run_id, command=[sys.executable, "train.py", "--steps", str(steps)],
                       created_at=time.time(), tick_s=1.0, artifacts=["final.pt"], usd_per_hour=0.0,
                       extra={"save_every_s": 3})
        transport = app.transport_for("local")
        click.echo(f"[1/5] up: starting run {run_id} under the agent in {transport.root}")
        rec = launch.up(app.registry, transport, launch.UpRequest(host="local", spec=spec, code_dir=code))
        click.echo(f"      agent is up; its status file is {rec.run_dir}/status.json")
        click.echo(f"[2/5] status: what `rgt status {run_id}` shows, for at least {watch_s:.0f}s and until the "
                   f"first checkpoint is verified (up to {phase_timeout_s:.0f}s)")
        st, waited = watch(transport, rec, lambda s: s.checkpoint.last_path is not None, watch_s, phase_timeout_s)
        first: Optional[int] = st.checkpoint.last_step if st is not None else None
        if st is None or st.checkpoint.last_path is None:
            if st is not None and st.state in TERMINAL:
                raise click.ClickException(f"the run ended {st.state} before any checkpoint was verified: "
                                           f"`rgt logs {run_id}` and `rgt events {run_id}` say why")
            _give_up(ctx, stop_cli, run_id, f"no checkpoint was verified within {phase_timeout_s:.0f}s; the run was "
                                            f"stopped: `rgt events {run_id}` shows how far it got")
        click.echo(f"      first verified checkpoint: step {first} after {waited:.0f}s")
        if st.state not in TERMINAL:
            click.echo(f"[3/5] stop: `rgt stop {run_id}` sends SIGTERM to the trainer's group, SIGKILL after the "
                       f"grace; the agent verifies the last save, then writes STOPPED (up to {phase_timeout_s:.0f}s)")
            asked = time.monotonic()
            ctx.invoke(stop_cli, run=run_id, wait_s=phase_timeout_s, reason="demo over")
            st, _ = watch(transport, rec, lambda s: False, 0.0, phase_timeout_s, show=False)
            waited = time.monotonic() - asked
            if st is None or st.state not in TERMINAL:
                raise click.ClickException(f"the run did not end within {phase_timeout_s:.0f}s of the stop: "
                                           f"`rgt status {run_id}` and `rgt events {run_id}`")
            click.echo(f"      the agent recorded {st.state} after {waited:.0f}s")
        else:
            click.echo(f"[3/5] stop: not needed, the run already ended {st.state}")
        click.echo("      " + "\n      ".join(render(rec, poll(transport, rec))))
        dest = os.path.join(tempfile.gettempdir(), f"rgt-demo-pulls-{run_id}")
        click.echo(f"[4/5] pull: `rgt pull {run_id}` brings the manifest's files home and re-hashes them")
        ctx.invoke(pull_cli, run=run_id, dest=dest)
        click.echo(f"      {dest} now holds PULL_VERIFIED.json: `rgt down {run_id}` would pass its gate")
        click.echo("[5/5] next: on a rented box you would run")
        click.echo("      rgt up myhost --profile vastai -- python train.py   # the same flow over SSH")
        click.echo(f"      rgt pull {run_id} && rgt down {run_id} --confirm {run_id}   # stop paying, data home")
        click.echo(f"      rgt events {run_id}   # the journal of what happened")
    finally:
        shutil.rmtree(code, ignore_errors=True)
