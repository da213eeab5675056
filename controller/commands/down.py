"""`rgt down [RUN] [--confirm RUN_ID]` (laptop): the teardown gate, then release the box; exit 4 when refused."""

from __future__ import annotations

import click

from . import run_argument


@click.command()
@run_argument
@click.option("--confirm", metavar="RUN_ID", default=None,
              help="The run id, typed back (instead of the prompt). There is no -y.")
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="The verified pull to check (default: where `rgt pull` put it).")
@click.option("--instance-id", default=None, help="Destroy this instance through the provider's API.")
@click.option("--provider", type=click.Choice(["vastai", "runpod"]), default=None,
              help="The API to use (default: the profile's).")
@click.option("--force-running", is_flag=True, help="Allow a run that has not ended (asks for its own sentence).")
@click.option("--jobs", type=click.IntRange(1, 256), default=None, help="Hashing threads for the re-check.")
@click.pass_obj
def cli(app, run, confirm, dest, instance_id, provider, force_running, jobs) -> None:
    """Refuse unless the box's current manifest is pulled and verified here; then stop the meter."""
    from rgt.controller import teardown

    rec = app.resolve_run(run)
    transport = app.transport_of(rec)
    req = teardown.DownRequest(dest=dest, confirm=confirm, instance_id=instance_id, provider=provider,
                               force_running=force_running, jobs=jobs)
    teardown.down(app.registry, transport, rec, req, lambda text: click.prompt(text, default="", show_default=False),
                  app.info)
