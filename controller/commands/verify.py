"""`rgt verify DIR` (laptop): check a pulled tree against its manifest.json and write PULL_VERIFIED.json."""

from __future__ import annotations

import click


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--allow-pickle", is_flag=True,
              help="Accept checkpoints that need full unpickling (can run code: only for files you trust).")
@click.option("--jobs", type=click.IntRange(1, 256), default=None, help="Hashing threads (default: all cores).")
@click.pass_obj
def cli(app, directory, allow_pickle, jobs) -> None:
    """Every entry present with its size and sha256, nothing extra, every checkpoint safe-loads; else exit 1."""
    import os

    from rgt.controller import verify
    from rgt.controller.pull import describe, fail_line
    from rgt.shared.errors import RgtError

    dest = os.path.abspath(directory)
    rep = verify.verify_tree(dest, allow_pickle=allow_pickle, jobs=jobs)
    if not rep.ok:
        verify.invalidate(dest)
        for p in rep.problems:
            click.echo(p)
        raise RgtError(fail_line(rep))
    verify.write_verified(dest, rep, allow_pickle)
    app.info(describe(rep, dest))
