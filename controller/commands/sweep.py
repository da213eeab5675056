"""`rgt sweep --hosts FILE|--slurm LOGIN --grid k=v1,v2 ... -- CMD {k}` and `rgt sweep status NAME` (laptop)."""

from __future__ import annotations

import os
import sys
import time

import click

from . import json_option, ssh_options


class _SweepGroup(click.Group):
    """`rgt sweep ...` with no subcommand name starts a sweep; `status` and `list` read them."""

    def parse_args(self, ctx: click.Context, args: list) -> list:
        """Anything that is not a subcommand (or help) is the start command's."""
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_SweepGroup)
def cli() -> None:
    """Run a grid of params, one run per cell under the agent, on SSH hosts or as Slurm jobs.

    `rgt sweep --hosts FILE --grid lr=1e-3,3e-4 --grid bs=32,64 -- python train.py --lr {lr} --bs {bs}`
    starts one (the same as `rgt sweep start ...`); `rgt sweep status NAME` shows it.
    """


@cli.command("start", context_settings={"ignore_unknown_options": False})
@click.option("--name", default=None, help="Sweep name; cells are NAME-1, NAME-2, ... (default sweep-date-4hex).")
@click.option("--hosts", "hosts_file", type=click.Path(dir_okay=False, exists=True),
              help="File with one ssh destination per line (# comments); cells go round-robin.")
@click.option("--slurm", "slurm_login", default=None, help="Slurm login host: every cell is its own job.")
@click.option("--grid", multiple=True, help="NAME=v1,v2 (repeatable); every combination is one cell.")
@click.option("--profile", default=None, help="Platform profile (default generic-ssh, or slurm with --slurm).")
@click.option("--python", default=None, help="Python on the boxes for the agent (default: probe).")
@click.option("--code", "code_dir", default=".", type=click.Path(file_okay=False, exists=True),
              help="Project dir to sync to every cell.")
@click.option("--artifacts", multiple=True, help="Glob under the code dir to pull at the end (repeatable).")
@click.option("--ckpt-dir", default=None, help="Checkpoint dir, relative to each run dir (default ckpt).")
@click.option("--max-restarts", type=int, default=None)
@click.option("--tick-s", type=float, default=None)
@click.option("--usd-per-hour", type=float, default=None)
@click.option("--time", "walltime", default=None, help="Slurm walltime per cell (sbatch --time).")
@click.option("--gpus", type=int, default=None, help="Slurm: GPUs per cell (--gres=gpu:N).")
@click.option("--heartbeat-timeout-s", type=float, default=60.0, show_default=True)
@ssh_options
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def start(app, name, hosts_file, slurm_login, grid, profile, python, code_dir, artifacts, ckpt_dir, max_restarts,
          tick_s, usd_per_hour, walltime, gpus, heartbeat_timeout_s, port, ssh_config, as_json, command) -> None:
    """Start CMD (after `--`) once per grid cell, {name} replaced by the cell's value."""
    from rgt.controller import sweep
    from rgt.controller.app import check_host
    from rgt.shared.errors import BadInput, RgtError
    from rgt.shared.paths import generate_run_id

    if bool(hosts_file) == bool(slurm_login):
        raise BadInput("say where cells go: --hosts FILE or --slurm LOGIN (one of them)")
    if hosts_file:
        with open(hosts_file, encoding="utf-8") as f:
            hosts = [check_host(h) if h != "local" else h for h in sweep.parse_hosts(f.read(), hosts_file)]
    else:
        hosts = [check_host(slurm_login)]
    name = name or generate_run_id("sweep")
    options = {"code_dir": os.path.abspath(code_dir), "python": python, "artifacts": list(artifacts) or None,
               "ckpt_dir": ckpt_dir, "max_restarts": max_restarts, "tick_s": tick_s, "usd_per_hour": usd_per_hour,
               "time": walltime, "gpus": gpus, "heartbeat_timeout_s": heartbeat_timeout_s, "port": port,
               "ssh_config": os.path.abspath(os.path.expanduser(ssh_config)) if ssh_config else None}
    sw = sweep.new_sweep(name, list(command), sweep.parse_grid(list(grid)), hosts if hosts_file else [],
                         profile or ("slurm" if slurm_login else "generic-ssh"), slurm_login, options)
    sw.save()
    app.info(f"sweep {sw.name}: {len(sw.cells)} cells on {', '.join(hosts)}")
    missed = sweep.start(app, sw, app.info)
    if as_json:
        app.data({"sweep": sw.name, "cells": sw.cells})
    app.info(f"  rgt sweep status {sw.name}   rgt pull --sweep {sw.name}")
    if missed:
        raise RgtError(f"{missed} of {len(sw.cells)} cells did not start (see above); the others run")


@cli.command("status")
@click.argument("name")
@json_option
@click.option("--reassign", is_flag=True, help="Rerun the cells of unreachable hosts elsewhere, from their newest "
                                               "pulled checkpoint.")
@click.option("--hosts", "hosts_file", type=click.Path(dir_okay=False, exists=True),
              help="With --reassign: where the cells go (default: the sweep's hosts that answer).")
@click.option("--slurm", "slurm_login", default=None, help="With --reassign: submit the cells to this login host.")
@click.pass_obj
def status(app, name, as_json, reassign, hosts_file, slurm_login) -> None:
    """One table of every cell: state, step, loss, host, cost, pull; exit 3 when a cell's host is unreachable."""
    from rgt.controller import sweep

    sw = sweep.Sweep.load(name)
    table = sweep.rows(app, sw)
    if reassign:
        hosts = None
        if hosts_file:
            with open(hosts_file, encoding="utf-8") as f:
                hosts = sweep.parse_hosts(f.read(), hosts_file)
        elif slurm_login:
            hosts = [slurm_login]
        if sweep.reassign(app, sw, table, hosts, app.info):
            time.sleep(0.5)  # the new runs' first heartbeats are in: show them
            table = sweep.rows(app, sw)
    if as_json:
        app.data({"sweep": sw.name, "cells": table})
    else:
        click.echo("\n".join(render(table)))
    if any(r["view"] == "unreachable" for r in table):
        sys.exit(3)


def pull_sweep(app, name: str, run, opts) -> None:
    """`rgt pull --sweep NAME`: every cell pulled and verified, then the sweep's table; exit 1 unless all verify."""
    from rgt.controller import sweep
    from rgt.shared.errors import BadInput, RgtError

    if run is not None or opts.follow:
        raise BadInput("--sweep pulls every cell of the sweep: give no RUN and no --follow")
    results = pull_cells(app, name, opts, app.info)
    table = sweep.rows(app, sweep.Sweep.load(name))
    click.echo("\n".join(render(table)))
    bad = [r for r in results if not (r["pull"] or "").startswith("verified")]
    for r in bad:
        app.info(f"cell {r['index']} ({r['run_id'] or 'not started'}): {r['pull']}: {r['why']}")
    if bad:
        raise RgtError(f"{len(bad)} of {len(results)} cells did not pull and verify")
    app.info(f"all {len(results)} cells pulled and verified")


@cli.command("list")
@click.pass_obj
def list_sweeps(app) -> None:
    """The sweeps this machine knows."""
    from rgt.controller import sweep
    from rgt.controller.state import state_dir

    folder = state_dir() / "sweeps"
    names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    for n in names:
        sw = sweep.Sweep.load(n)
        where = f"slurm:{sw.slurm}" if sw.slurm else ", ".join(sw.hosts)
        click.echo(f"{n}  {len(sw.cells)} cells  {where}")
    if not names:
        app.info("no sweeps yet: rgt sweep --hosts FILE --grid k=v1,v2 -- CMD {k}")


def pull_cells(app, name: str, opts, echo) -> list:
    """`rgt pull --sweep NAME`: pull and verify every cell's current run, with `rgt pull`'s own rounds.

    With --dest D, cell runs go to D/<run_id>. One result per cell: "verified" (the final manifest),
    "verified (partial)" for a cell still running (its verified checkpoints), "unreachable", or "failed".
    """
    from rgt.controller.observe import poll
    from rgt.controller.pull import _finish, agent_argv, default_dest, pull_round
    from rgt.controller.sweep import TERMINAL, Sweep
    from rgt.shared.errors import RgtError, TransportError

    sw = Sweep.load(name)
    out = []
    for cell in sw.cells:
        result = {"index": cell["index"], "run_id": cell["run_id"], "host": cell["host"], "pull": None, "why": None}
        out.append(result)
        if not cell["run_id"]:
            result.update(pull="not started", why=cell.get("error"))
            continue
        rec = app.registry.get(cell["run_id"])
        transport = app.transport_of(rec)
        dest = os.path.abspath(os.path.join(opts.dest, rec.run_id) if opts.dest else
                               rec.pull_dest or default_dest(rec.run_id))
        say = lambda m, r=rec.run_id: echo(f"[{r}] {m}")  # noqa: E731
        try:
            for wait_s in (2.0, 4.0, 8.0, None):
                res = pull_round(transport, rec, dest, opts, agent_argv(transport, rec), say, full_hash=True)
                obs = poll(transport, rec)
                if res.final or wait_s is None or not (obs.status and obs.status.state in TERMINAL):
                    break
                say(f"the run has ended but its final manifest is not there yet; pulling again in {wait_s:.0f}s")
                time.sleep(wait_s)  # the agent is still verifying its last checkpoints before the marker
            _finish(app.registry, rec, dest, res, say)
        except TransportError as e:
            result.update(pull="unreachable", why=str(e))
        except RgtError as e:
            result.update(pull="failed", why=str(e))
        else:
            result["pull"] = "verified" if res.final else "verified (partial)"
    return out


def render(table: list) -> list:
    """The sweep's one table: cell, run, params, host, state, step, loss, cost, pull."""
    from rgt.controller.sweep import params_text

    lines = [f"{'CELL':>4}  {'RUN':24} {'PARAMS':24} {'HOST':18} {'STATE':24} {'STEP':>7} {'LOSS':>9} {'USD':>7}  PULL"]
    total, counts = 0.0, {}
    for r in table:
        state = r["view"] if r["view"] != "unreachable" else f"unreachable ({r['last_state'] or '?'})"
        if r.get("job") and r["view"] not in ("unreachable",) and not r["view"].startswith("job"):
            state += f" [job {r['job']['id']}]"
        counts[r["view"]] = counts.get(r["view"], 0) + 1
        usd = r["usd_so_far"]
        total += usd or 0.0
        loss = "-" if r["loss"] is None else f"{r['loss']:.4g}"
        lines.append(f"{r['index']:>4}  {(r['run_id'] or '-')[:24]:24} {params_text(r['params'])[:24]:24} "
                     f"{(r['host'] or '-')[:18]:18} {state[:24]:24} {'-' if r['step'] is None else r['step']:>7} "
                     f"{loss:>9} {'-' if usd is None else f'{usd:.2f}':>7}  {r['pulled'] or '-'}")
        if r.get("replaces"):
            lines.append(f"{'':6}(reassigned from {r['replaces']})")
        if r.get("error") and r["view"] in ("not started", "unreachable"):
            lines.append(f"{'':6}{r['error'][:110]}")
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    lines.append(f"{len(table)} cells: {summary}; spent {total:.2f} USD as last seen")
    return lines
