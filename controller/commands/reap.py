"""`rgt reap [RUN] [--confirm RUN_ID]` (laptop): show, then kill, processes proven to hold the box's GPUs."""

from __future__ import annotations

import json

import click

from . import json_option, run_argument


@click.command()
@run_argument
@click.option("--confirm", default=None, metavar="RUN_ID", help="Type the run id back to kill what is shown.")
@click.option("--min-age-s", type=float, default=120.0, show_default=True, hidden=True)
@click.option("--device-prefix", default="/dev/nvidia", hidden=True)
@json_option
@click.pass_obj
def cli(app, run, confirm, min_age_s, device_prefix, as_json) -> None:
    """Zombie VRAM: list processes outside the run that hold /dev/nvidia*; kill them only with --confirm."""
    from rgt.shared.errors import GateRefused, RgtError

    rec = app.resolve_run(run)
    transport = app.transport_of(rec)
    base = ["reap", rec.run_dir, "--min-age-s", str(min_age_s), "--device-prefix", device_prefix]
    res = transport.run_agent(base, python=rec.python)
    if res.rc != 0:
        raise RgtError(f"reap failed on {rec.host}: {res.err.decode(errors='replace').strip()[-300:]}")
    cands = json.loads(res.out)["candidates"]
    if as_json and confirm is None:
        app.data(cands)
    for c in cands:
        app.info(f"pid {c['pid']:>7}  age {c['age_s']:>8.0f}s  holds {', '.join(c['devices'])}  {c['cmdline'][:80]}")
    if not cands:
        app.info(f"no process outside run {rec.run_id} is proven to hold a GPU on {rec.host}")
        return
    if confirm is None:
        app.info(f"nothing killed. To SIGKILL these {len(cands)} process(es): rgt reap {rec.run_id} "
                 f"--confirm {rec.run_id}")
        return
    if confirm != rec.run_id:
        raise GateRefused(f"--confirm {confirm!r} is not the run id {rec.run_id!r}: nothing killed")
    kill = [f"{c['pid']}:{c['start_time']}" for c in cands]
    res = transport.run_agent([*base, *[x for k in kill for x in ("--kill", k)]], python=rec.python)
    out = json.loads(res.out)
    if as_json:
        app.data(out)
    for c in out["killed"]:
        app.info(f"killed pid {c['pid']}")
    for s in out["skipped"]:
        app.info(f"left pid {s['pid']}: {s['why']}")
