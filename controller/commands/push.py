"""`rgt push HOST [--run ID] [--code DIR] [--start]` (laptop): the agent and a run's code onto the persistent root."""

from __future__ import annotations

import os

import click

from . import json_option, ssh_options


@click.command()
@click.argument("host")
@click.option("--profile", default=None,
              help="Platform profile: its fast_dir/.rgt is the root (default: the run's, else generic-ssh).")
@click.option("--root", default=None, help="$RGT_ROOT on the box (overrides the profile's).")
@click.option("--run", "run_id", default=None, help="Also make this run's dir, register it here, and sync --code.")
@click.option("--code", "code_dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="Project dir to sync into the run's code/ (needs --run).")
@click.option("--python", default=None, help="Python on the box for the agent (default: the spec's, else probe).")
@click.option("--start", is_flag=True, help="Start (or resume) the run's agent now, as the onstart script would.")
@click.option("--replace-code", is_flag=True,
              help="Let --code replace the code/ of a run that already ran (its outputs there are deleted).")
@ssh_options
@json_option
@click.pass_obj
def cli(app, host, profile, root, run_id, code_dir, python, start, replace_code, port, ssh_config,
        as_json) -> None:
    """Copy the agent archive to HOST, where an onstart script (`rgt onstart`) finds it on every start."""
    from rgt.controller import launch, onstart
    from rgt.controller.app import check_host
    from rgt.controller.profiles import load_profile
    from rgt.controller.registry import RunRecord
    from rgt.shared.errors import BadInput, RgtError
    from rgt.shared.paths import validate_run_id

    if host != "local":
        check_host(host)
    if (code_dir or start) and not run_id:
        raise BadInput("--code and --start need --run ID (the run named in the onstart script)")
    old = None
    if run_id:
        validate_run_id(run_id)
        try:
            old = app.registry.get(run_id)
        except BadInput:
            old = None
        if old is not None and old.host != host:
            raise BadInput(f"run {run_id} is registered for {old.host}, not {host}; pick another --run, or "
                           f"remove {app.registry.dir}/{run_id}.json")
    profile = profile or (old.profile if old else None) or ("local" if host == "local" else "generic-ssh")
    prof = load_profile(profile)
    if root is None and old is not None:
        root = old.root
    elif root is None and host != "local":
        root = onstart.persistent_root(prof.fast_dir)
    transport = app.transport_for(host, port, ssh_config, root)
    box_root = transport.root
    archive = launch.ensure_pyz(transport, box_root)
    out = {"host": host, "root": box_root, "pyz": archive}
    app.info(f"agent archive on {host}: {archive}")
    if not run_id:
        if as_json:
            app.data(out)
        return
    rec = RunRecord(run_id=run_id, host=host, root=box_root, profile=profile, port=port, ssh_config=ssh_config,
                    python=python or (old.python if old else None))
    res = transport.run(["mkdir", "-p", f"{rec.run_dir}/code", f"{rec.run_dir}/logs"])
    if res.rc != 0:
        raise RgtError(f"cannot create {rec.run_dir} on {host}: {res.err.decode(errors='replace').strip()[:300]}")
    transport.run(["chmod", "700", rec.run_dir])
    if code_dir:
        if not replace_code and (transport.exists(f"{rec.run_dir}/status.json")
                                 or transport.exists(f"{rec.run_dir}/exit.json")):
            raise BadInput(f"run {run_id} on {host} has already run: syncing --code would delete the outputs in "
                           f"its code/ dir; pull them first, then add --replace-code")
        launch.sync_code(transport, os.path.abspath(code_dir), rec.run_dir)
        app.info(f"code synced into {rec.run_dir}/code")
    spec = launch.box_spec(transport, rec)
    if spec is not None:
        launch.adopt_spec(rec, spec)
    if old is not None:
        rec.last_status, rec.last_seen_at, rec.extra = old.last_status, old.last_seen_at, old.extra
    app.registry.save(rec)
    out.update(run_id=run_id, run_dir=rec.run_dir, spec=spec is not None)
    if start:
        if spec is None:
            raise BadInput(f"no spec.json in {rec.run_dir} on {host}: the onstart script has not run there yet "
                           f"(see the instance log), or the run id differs")
        out["started"] = launch.resume(transport, rec)
        app.info(out["started"])
    elif spec is None:
        app.info(f"no spec.json in {rec.run_dir} yet: the onstart script writes it at the next container start")
    else:
        app.info(f"run {run_id} is registered; start it now with `rgt push {host} --run {run_id} --start` "
                 f"or `rgt resume {run_id}`, or restart the container")
    if as_json:
        app.data(out)
