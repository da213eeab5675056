"""`rgt demo` (laptop): the whole loop on this machine with a tiny CPU torch trainer; no GPU, no SSH."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from importlib.util import find_spec

import click


def demo_trainer() -> str:
    """The demo trainer shipped in the agent package (located, not imported: it is the user's code here)."""
    spec = find_spec("rgt.agent.demo")
    assert spec is not None and spec.submodule_search_locations
    return os.path.join(list(spec.submodule_search_locations)[0], "train.py")


@click.command()
@click.option("--steps", type=int, default=400, show_default=True)
@click.option("--watch-s", type=float, default=12.0, show_default=True, help="How long to show status.")
@click.pass_obj
def cli(app, steps, watch_s) -> None:
    """Run the demo trainer under the agent, show status, stop it, and show what comes next."""
    from rgt.controller import launch
    from rgt.controller.commands.status import render
    from rgt.controller.observe import poll
    from rgt.shared.paths import generate_run_id
    from rgt.shared.spec import RunSpec

    try:
        import torch  # noqa: F401
    except ImportError:
        raise click.ClickException("the demo needs torch in rgt's venv: run ./install.sh") from None
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
        click.echo(f"[2/5] status: polling for {watch_s:.0f}s (what `rgt status {run_id}` shows)")
        deadline, last = time.monotonic() + watch_s, None
        while time.monotonic() < deadline:
            obs = poll(transport, rec)
            if obs.status is not None and obs.status.seq != last:
                last = obs.status.seq
                lines = [x for x in render(rec, obs) if not x.lstrip().startswith(("GPU", "host", "sentinels"))]
                click.echo("      " + "\n      ".join(lines[:3]))
                if obs.status.state in ("succeeded", "failed", "stopped"):
                    break
            time.sleep(1.0)
        click.echo(f"[3/5] stop: `rgt stop {run_id}` sends SIGTERM to the trainer's group, SIGKILL after the grace")
        from rgt.controller.commands.pull import cli as pull_cli
        from rgt.controller.commands.stop import cli as stop_cli

        ctx = click.get_current_context()
        ctx.invoke(stop_cli, run=run_id, wait_s=30.0, reason="demo over")
        obs = poll(transport, rec)
        click.echo("      " + "\n      ".join(render(rec, obs)))
        dest = os.path.join(tempfile.gettempdir(), f"rgt-demo-pulls-{run_id}")
        click.echo(f"[4/5] pull: `rgt pull {run_id}` brings the manifest's files home and re-hashes them")
        ctx.invoke(pull_cli, run=run_id, dest=dest, follow=False, allow_pickle=False, jobs=None, bwlimit=None)
        click.echo(f"      {dest} now holds PULL_VERIFIED.json: `rgt down {run_id}` would pass its gate")
        click.echo("[5/5] next: on a rented box you would run")
        click.echo("      rgt up myhost --profile vastai -- python train.py   # the same flow over SSH")
        click.echo(f"      rgt pull {run_id} && rgt down {run_id} --confirm {run_id}   # stop paying, data home")
        click.echo(f"      rgt events {run_id}   # the journal of what happened")
    finally:
        shutil.rmtree(code, ignore_errors=True)
