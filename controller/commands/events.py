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
    from rgt.controller.boundary import MAX_JOURNAL_BYTES, MAX_VALUE_CHARS, clean, journal_from_box

    rec = app.resolve_run(run)
    raw = app.transport_of(rec).read_file(f"{rec.run_dir}/events.msgpack", max_bytes=MAX_JOURNAL_BYTES + 1)
    read = journal_from_box(raw or b"")  # bounded; a field of the wrong type is dropped with a note

    def text(v) -> str:
        return clean(v if isinstance(v, str) else json.dumps(v, sort_keys=True), limit=MAX_VALUE_CHARS)

    for r in read.records:
        if as_json:
            click.echo(json.dumps(r, sort_keys=True))  # ASCII-escaped: no control byte reaches a terminal
            continue
        t = r.get("t")
        when = "????-??-?? ??:??:??" if t is None else datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
        rest = {k: v for k, v in r.items() if k not in ("t", "kind")}
        if r.get("kind") == "transition":
            click.echo(f"{when}  {text(r.get('old'))} -> {text(r.get('new'))}: {text(r.get('reason'))}")
        else:
            click.echo(f"{when}  {text(r.get('kind', '?'))}: " + ", ".join(f"{clean(k)}={text(v)}"
                                                                       for k, v in rest.items()))
    for note in read.notes:
        app.info(f"({note})")
    if read.torn_bytes:
        app.info(f"(the last {read.torn_bytes} bytes of the journal are torn: the agent crashed mid-write)")
