"""`rgt events [RUN] [--json]` (laptop): the run's journal from the box, readable or as JSON lines."""

from __future__ import annotations

import datetime
import json

import click

from . import json_option, run_argument


@click.command()
@run_argument
@json_option
@click.pass_obj
def cli(app, run, as_json) -> None:
    """Print the journal of state changes, failures and agent restarts."""
    from rgt.shared.journal import parse_journal

    rec = app.resolve_run(run)
    raw = app.transport_of(rec).read_file(f"{rec.run_dir}/events.msgpack")
    read = parse_journal(raw or b"")
    for r in read.records:
        if as_json:
            click.echo(json.dumps(r, sort_keys=True, default=str))
            continue
        when = datetime.datetime.fromtimestamp(r.get("t", 0)).strftime("%Y-%m-%d %H:%M:%S")
        rest = {k: v for k, v in r.items() if k not in ("t", "kind")}
        if r.get("kind") == "transition":
            click.echo(f"{when}  {r.get('old')} -> {r.get('new')}: {r.get('reason')}")
        else:
            click.echo(f"{when}  {r.get('kind')}: " + ", ".join(f"{k}={v}" for k, v in rest.items()))
    if read.torn_bytes:
        app.info(f"(the last {read.torn_bytes} bytes of the journal are torn: the agent crashed mid-write)")
