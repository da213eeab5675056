"""`rgt attach HOST RUN` (laptop): register a run started another way (onstart, another laptop) after reading it."""

from __future__ import annotations

import os

import click

from . import json_option, ssh_options


@click.command()
@click.argument("host")
@click.argument("run")
@click.option("--root", default=None, help="$RGT_ROOT on the box (default: ~/.rgt of the login).")
@click.option("--python", default=None, help="Python on the box for the agent archive (default: probe).")
@ssh_options
@json_option
@click.pass_obj
def cli(app, host, run, root, python, port, ssh_config, as_json) -> None:
    """Add RUN on HOST to this machine's registry; its status must be readable there."""
    from rgt.controller import launch
    from rgt.controller.app import check_host
    from rgt.controller.observe import Observation, poll, remember
    from rgt.controller.registry import RunRecord
    from rgt.shared.errors import BadInput, TransportError
    from rgt.shared.paths import validate_run_id

    run_id = validate_run_id(run)
    ssh_config = os.path.abspath(os.path.expanduser(ssh_config)) if ssh_config else None
    transport = app.transport_for(check_host(host), port, ssh_config, root)
    rec = RunRecord(run_id=run_id, host=host, root=transport.root, port=port, ssh_config=ssh_config,
                    python=python)
    try:
        old = app.registry.get(run_id)
    except BadInput:
        old = None
    if old is not None and (old.host, old.root) != (rec.host, rec.root):
        raise BadInput(f"run {run_id} is already registered for {old.host}:{old.run_dir}; "
                       f"pick the other one with {host}:{run_id}, or remove {app.registry.dir}/{run_id}.json")
    if old is not None:  # attaching again refreshes the record but keeps where its pulls went
        rec.pull_dest, rec.extra, rec.last_status = old.pull_dest, old.extra, old.last_status
    obs: Observation = poll(transport, rec)
    if obs.view == "unreachable":
        raise TransportError(obs.error or f"transport unavailable: {host}")
    spec = _typed_spec(launch.box_spec(transport, rec))
    if obs.status is None and spec is None:
        raise BadInput(f"no run {run_id} on {host} under {rec.root} (no status.json, no spec.json); "
                       f"pass --root if the box keeps runs elsewhere")
    if spec is not None:
        launch.adopt_spec(rec, spec)
    app.registry.save(rec)
    remember(app.registry, rec, obs)
    if as_json:
        app.data({"run_id": rec.run_id, "host": rec.host, "run_dir": rec.run_dir, "view": obs.view})
    app.info(f"attached {run_id} on {host} ({rec.run_dir}): {obs.view}")


def _typed_spec(spec):
    """The box's spec.json fields the registry keeps, each only when it has the right type (else dropped)."""
    import math
    import re

    if spec is None:
        return None
    out = {}
    if isinstance(spec.get("profile"), str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", spec["profile"]):
        out["profile"] = spec["profile"]
    if isinstance(spec.get("python"), str) and spec["python"].startswith("/") and len(spec["python"]) < 4096 and \
            not any(ord(c) < 32 or ord(c) == 127 for c in spec["python"]):
        out["python"] = spec["python"]
    t = spec.get("created_at")
    if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0 < t < 1e11:
        out["created_at"] = float(t)
    return out
