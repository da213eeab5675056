"""`rgt pull [RUN] [--dest D] [--follow]` (laptop): bring the run's artifacts home and prove them."""

from __future__ import annotations

import click

from . import run_argument


@click.command()
@run_argument
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Where to pull to (default ./rgt-pulls/RUN, or where the last pull went).")
@click.option("--follow", is_flag=True, help="Keep pulling newly verified checkpoints until the run ends.")
@click.option("--allow-pickle", is_flag=True, hidden=True, help="Gone: the laptop never unpickles.")
@click.option("--jobs", type=click.IntRange(1, 256), default=None, help="Hashing threads (default: all cores).")
@click.option("--bwlimit", type=click.IntRange(1), default=None, envvar="RGT_RSYNC_BWLIMIT",
              help="Bandwidth cap for rsync in KiB/s (env RGT_RSYNC_BWLIMIT).")
@click.option("--sweep", "sweep_name", default=None, help="Pull and verify every cell of this sweep (into D/RUN).")
@click.pass_obj
def cli(app, run, dest, follow, allow_pickle, jobs, bwlimit, sweep_name) -> None:
    """Pull by the box's manifest (rsync, resumable), then verify every file; exit 1 when it does not verify."""
    from rgt.controller import pull

    if allow_pickle:
        refuse_allow_pickle("pull")
    if sweep_name:
        from rgt.controller.commands.sweep import pull_sweep

        pull_sweep(app, sweep_name, run, pull.PullOptions(dest=dest, follow=follow, jobs=jobs, bwlimit_kbps=bwlimit))
        return
    rec = app.resolve_run(run)
    transport = app.transport_of(rec)
    opts = pull.PullOptions(dest=dest, follow=follow, jobs=jobs)
    if bwlimit:
        opts.bwlimit_kbps = bwlimit
    if follow:
        pull.follow(app.registry, transport, rec, opts, app.info)
    else:
        pull.pull(app.registry, transport, rec, opts, app.info)


def refuse_allow_pickle(command: str) -> None:
    """The laptop's --allow-pickle is gone: say where it went, exit 2."""
    from rgt.shared.errors import BadInput

    raise BadInput(f"`rgt {command} --allow-pickle` is gone: this machine never unpickles a checkpoint (it checks "
                   "hashes, zip structure and weights_only loads); for a trainer whose checkpoints need full "
                   "unpickling to resume, pass `rgt up --allow-pickle` (it applies on the box only)")
