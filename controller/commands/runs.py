"""`rgt runs [--json]` (laptop): the registry, with each run's last known state and spend."""

from __future__ import annotations

import time

import click

from . import json_option


@click.command()
@json_option
@click.pass_obj
def cli(app, as_json) -> None:
    """List the runs this machine knows."""
    runs = app.registry.all()
    if as_json:
        app.data([{"run_id": r.run_id, "host": r.host, "profile": r.profile, "run_dir": r.run_dir,
                   "state": (r.last_status or {}).get("state"), "last_seen_at": r.last_seen_at,
                   "usd_so_far": ((r.last_status or {}).get("cost") or {}).get("usd_so_far")} for r in runs])
        return
    if not runs:
        app.info("no runs yet: `rgt demo` or `rgt up local -- python train.py`")
        return
    total = 0.0
    click.echo(f"{'RUN':32} {'HOST':20} {'STATE':10} {'SEEN':>8} {'USD':>8}")
    for r in runs:
        st = r.last_status or {}
        seen = f"{time.time() - r.last_seen_at:.0f}s" if r.last_seen_at else "-"
        usd = (st.get("cost") or {}).get("usd_so_far")
        total += usd or 0.0
        click.echo(f"{r.run_id:32} {r.host[:20]:20} {st.get('state', '?'):10} {seen:>8} "
                   f"{'-' if usd is None else f'{usd:.2f}':>8}")
    if total:
        click.echo(f"{'total':>72} {total:8.2f}")
