"""`rgt onstart --profile vastai [--run ID] -- CMD` (laptop): print the bootstrapper for vast.ai's --onstart-cmd."""

from __future__ import annotations

import os

import click

from rgt.shared.errors import BadInput
from rgt.shared.paths import generate_run_id, validate_run_id
from rgt.shared.spec import RunSpec


@click.command()
@click.option("--profile", default=None, help="Platform profile; its fast_dir is the root (default vastai).")
@click.option("--run", "run_id", default=None, help="Run id; default name-date-4hex (printed on stderr).")
@click.option("--root", default=None, help="$RGT_ROOT on the box (default: the profile's fast_dir/.rgt, else ~/.rgt).")
@click.option("--ckpt-dir", default=None, help="Checkpoint dir, relative to the run dir (default ckpt).")
@click.option("--artifacts", multiple=True, help="Glob under the code dir to pull at the end (repeatable).")
@click.option("--secret", "secrets", multiple=True,
              help="Env var NAME the trainer needs: only the name goes in; send values with `rgt secrets push`.")
@click.option("--python", default=None, help="Python on the box (default: probe the profile's list).")
@click.option("--code", "code_dir", default=".", type=click.Path(file_okay=False, exists=True),
              help="Project dir whose rgt.toml gives defaults (the code itself goes with `rgt push`).")
@click.option("--tick-s", type=float, default=None, help="Agent tick (default 2 s).")
@click.option("--max-restarts", type=int, default=None)
@click.option("--stall-after-s", type=float, default=None)
@click.option("--start-grace-s", type=float, default=None)
@click.option("--usd-per-hour", type=float, default=None)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the script to this file instead of stdout.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def cli(app, profile, run_id, root, ckpt_dir, artifacts, secrets, python, code_dir, tick_s, max_restarts,
        stall_after_s, start_grace_s, usd_per_hour, output, command) -> None:
    """Print a POSIX sh script for `vastai create instance ... --onstart-cmd "$(cat onstart.sh)"`.

    On every container start it relaunches the agent, which resumes from the newest verified
    checkpoint; a DONE run is left alone. It carries the spec, never secret values. The agent archive
    must be on the instance's disk: `rgt push HOST --profile P --run ID --code DIR --start`.
    """
    from rgt.controller import onstart, pyz, rgttoml
    from rgt.controller.commands.up import _apply_profile, _default_name, _merge
    from rgt.controller.state import state_dir

    if not command:
        raise BadInput("no command: put the training command after `--`, e.g. rgt onstart -- python train.py")
    project = rgttoml.load(code_dir)
    toml = project.get("run", {})
    profile = profile or toml.get("profile") or "vastai"
    run_id = validate_run_id(run_id or toml.get("run") or generate_run_id(_default_name(command)))
    # created_at 0: the script stamps the first container start, so spend counts from the box's start.
    spec = RunSpec(run_id=run_id, command=list(command), created_at=0.0, profile=profile)
    _merge(spec, toml, ckpt_dir=ckpt_dir, artifacts=list(artifacts) or None, tick_s=tick_s,
           max_restarts=max_restarts, stall_after_s=stall_after_s, start_grace_s=start_grace_s,
           usd_per_hour=usd_per_hour)
    names = list(secrets) or list(toml.get("secrets") or [])
    if project.get("notify"):
        spec.notify = dict(project["notify"])
        hook = spec.notify.get("webhook_secret")
        if hook and hook not in names:
            names.append(hook)
    spec.secret_names = names
    prof = _apply_profile(app, spec, f"onstart:{profile}", False)
    python = python or toml.get("python")
    spec.python = python or None
    pythons = [python] if python else list(prof.python) or ["python3", "python"]
    _, sha12 = pyz.build(str(state_dir() / "pyz"))
    box_root = onstart.persistent_root(prof.fast_dir, root)
    script = onstart.build(spec, sha12, profile, box_root, pythons)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(script.text)
        os.chmod(output, 0o644)
    else:
        click.echo(script.text, nl=False)
    where = box_root or "~/.rgt"
    app.info(f"onstart script for run {run_id}: {script.size_bytes} bytes of {onstart.ONSTART_LIMIT_BYTES} "
             f"(spec as {script.encoding}); runs under {where} on the box, agent {sha12}.pyz")
    app.info(f"next: create the instance with --onstart-cmd, then `rgt push HOST --profile {profile} --run {run_id} "
             f"--code DIR --start` (and `rgt secrets push {run_id}` for secrets)")
