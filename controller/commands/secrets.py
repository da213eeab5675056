"""`rgt secrets push [RUN] [--secret NAME]...` (laptop): refresh a run's secrets.env on the box through stdin."""

from __future__ import annotations

import json

import click

from . import run_argument


@click.group()
def cli() -> None:
    """Secret values for a run: read from this shell's environment, sent over stdin, stored 0600 on the box."""


@cli.command("push")
@run_argument
@click.option("--secret", "names", multiple=True,
              help="Env var NAME to send (repeatable; default: every name in the run's spec).")
@click.pass_obj
def push(app, run, names) -> None:
    """Write RUN's secrets.env from this shell's environment (atomically, 0600).

    The next trainer attempt reads the new values; a trainer that is running keeps the environment it
    started with (`rgt stop` then `rgt resume` to restart it now). Values never appear in argv, output
    or logs.
    """
    from rgt.controller import launch
    from rgt.shared.errors import BadInput, RgtError
    from rgt.shared.secrets import format_secrets, parse_secrets

    rec = app.resolve_run(run)
    transport = app.transport_of(rec)
    raw = transport.read_file(f"{rec.run_dir}/spec.json")
    if raw is None:
        raise BadInput(f"no run {rec.run_id} on {rec.host} ({rec.run_dir}/spec.json is absent)")
    try:
        spec_names = list(json.loads(raw.decode("utf-8")).get("secret_names") or [])
    except (UnicodeDecodeError, ValueError, AttributeError):
        raise RgtError(f"{rec.run_dir}/spec.json on {rec.host} is not a spec") from None
    wanted = list(dict.fromkeys(names or spec_names))
    if not wanted:
        raise BadInput(f"run {rec.run_id} names no secrets in its spec: say which with --secret NAME")
    values = launch.collect_secrets(wanted)
    kept = []
    others = [n for n in spec_names if n not in values]
    if others:
        # Only some names were asked for: keep the spec's other values as they are on the box. They come
        # back through the transport's stdout into memory here, and go out again through stdin.
        current = parse_secrets((transport.read_file(f"{rec.run_dir}/secrets.env") or b"").decode("utf-8", "replace"))
        for n in others:
            if n in current:
                values[n] = current[n]
                kept.append(n)
    transport.write_file(f"{rec.run_dir}/secrets.env", format_secrets(values).encode("utf-8"), "600")
    sent = ", ".join(wanted)
    kept_text = f" (kept: {', '.join(kept)})" if kept else ""
    app.info(f"secrets.env of {rec.run_id} on {rec.host} updated: {sent}{kept_text}")
    extra = [n for n in wanted if n not in spec_names]
    if extra:
        app.info(f"note: {', '.join(extra)} not in the spec's secret names; the trainer gets them all the same")
    app.info("a running trainer keeps its environment: the next attempt reads these values "
             f"(`rgt stop {rec.run_id}` then `rgt resume {rec.run_id}` to restart it now)")
