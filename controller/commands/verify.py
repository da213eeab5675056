"""`rgt verify DIR` (laptop): check a pulled tree against its manifest.json and write the sealed PULL_VERIFIED.json."""

from __future__ import annotations

import click


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--allow-pickle", is_flag=True, hidden=True, help="Gone: the laptop never unpickles.")
@click.option("--jobs", type=click.IntRange(1, 256), default=None, help="Hashing threads (default: all cores).")
@click.pass_obj
def cli(app, directory, allow_pickle, jobs) -> None:
    """Every entry present with its size and sha256, nothing extra, every checkpoint checked (never unpickled)."""
    import os

    from rgt.controller import verify
    from rgt.controller.commands.pull import refuse_allow_pickle
    from rgt.controller.pull import describe, fail_line
    from rgt.shared.errors import RgtError

    if allow_pickle:
        refuse_allow_pickle("verify")
    dest = os.path.abspath(directory)
    rep = verify.verify_tree(dest, jobs=jobs)
    if not rep.ok:
        verify.invalidate(dest)
        for p in rep.problems:
            click.echo(p)
        raise RgtError(fail_line(rep))
    verify.write_verified(dest, rep)
    app.info(describe(rep, dest))
