"""`rgt up HOST|local -- CMD` (laptop): put a run on a box under the agent and wait for its first heartbeat."""

from __future__ import annotations

import os
import time
from typing import Optional, Tuple

import click

from rgt.shared.errors import BadInput
from rgt.shared.paths import generate_run_id, validate_run_id
from rgt.shared.spec import RunSpec

from . import json_option, ssh_options


def _default_name(command: Tuple[str, ...]) -> str:
    for word in command:
        base = os.path.basename(word)
        if base.endswith((".py", ".sh")):
            return base.rsplit(".", 1)[0]
    return os.path.basename(command[0]) if command else "run"


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("host")
@click.option("--profile", default=None, help="Platform profile (see `rgt profile list`).")
@click.option("--run", "run_id", default=None, help="Run id; default name-date-4hex.")
@click.option("--ckpt-dir", default=None,
              help="$RGT_CKPT_DIR: relative to the run dir (default ckpt) or absolute (e.g. /root/autodl-tmp/out).")
@click.option("--keep-last", type=click.IntRange(min=1), default=None,
              help="Prune the user's own checkpoint folders too, keeping the newest N verified (default: never).")
@click.option("--ckpt-glob", "ckpt_globs", multiple=True,
              help="Another checkpoint pattern, added to *.pt *.pth *.ckpt *.safetensors checkpoint-*/ (repeatable).")
@click.option("--artifacts", multiple=True,
              help="Glob to pull at the end: under the code dir, $RGT_CKPT_DIR/..., or inside an absolute ckpt dir.")
@click.option("--secret", "secrets", multiple=True, help="Env var NAME whose value goes to the box by stdin.")
@click.option("--python", default=None, help="Python on the box for the agent (default: probe python3, python).")
@click.option("--trainer-python", default=None,
              help="The python with torch on the box, to verify checkpoints under (default: the command's python).")
@click.option("--allow-pickle", is_flag=True, expose_value=False,
              callback=lambda c, p, v: c.meta.__setitem__("rgt_allow_pickle", True) if v else None,
              help="Let checkpoints that need full unpickling be resumed from, on the box only (trusted code only).")
@click.option("--code", "code_dir", default=".", type=click.Path(file_okay=False, exists=True),
              help="Project dir to sync.")
@click.option("--tick-s", type=float, default=None, help="Agent tick (default 2 s).")
@click.option("--max-restarts", type=int, default=None)
@click.option("--stall-after-s", type=float, default=None)
@click.option("--nan-after", type=click.IntRange(min=1), default=None, expose_value=False,
              callback=lambda c, p, v: c.meta.__setitem__("rgt_nan_after", v) if v is not None else None,
              help="End the attempt as `nan` after this many consecutive non-finite losses (default 3).")
@click.option("--start-grace-s", type=float, default=None)
@click.option("--usd-per-hour", type=float, default=None)
@click.option("--heartbeat-timeout-s", type=float, default=60.0, show_default=True)
@click.option("--queue", "queue_file", type=click.Path(dir_okay=False, exists=True),
              help="One shell command per line ('name: cmd' names a cell); run in order under the agent.")
@click.option("--from", "from_cell", type=int, default=1, help="Start at the N-th cell of the queue.")
@click.option("--gpus", default=None, help="GPU indices for this run (CUDA_VISIBLE_DEVICES), leased on the box.")
@click.option("--share-gpu", is_flag=True, help="Let other runs use the same GPUs.")
@click.option("--time", "walltime", default=None, help="Walltime under a scheduler (Slurm's --time, e.g. 4:00:00).")
@click.option("--durable-dir", default=None, help="Where verified checkpoints and cell outputs are copied.")
@click.option("--min-free-gb", type=float, default=None, help="Disk gate floor before every cell.")
@click.option("--progress-step", metavar="REGEX", expose_value=False, callback=lambda c, p, v: _progress(c, "step", v),
              help="Regex whose first group is the step (a second group, the total); overrides [progress] step.")
@click.option("--progress-loss", metavar="REGEX", expose_value=False, callback=lambda c, p, v: _progress(c, "loss", v),
              help="Regex whose first group is the loss; overrides [progress] loss.")
@click.option("--progress-total", metavar="REGEX", expose_value=False,
              callback=lambda c, p, v: _progress(c, "total", v),
              help="Regex whose first group is the total steps; overrides [progress] total.")
@click.option("--dry-run", is_flag=True, help="Show the spec and environment; run nothing.")
@click.option("--brief", is_flag=True, help="Show the platform briefing again, even for a host seen before.")
@ssh_options
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def cli(app, host, profile, run_id, ckpt_dir, keep_last, ckpt_globs, artifacts, secrets, python, trainer_python,
        code_dir, tick_s, max_restarts, stall_after_s, start_grace_s, usd_per_hour, heartbeat_timeout_s, queue_file,
        from_cell, gpus, share_gpu, walltime, durable_dir, min_free_gb, dry_run, brief, port, ssh_config, as_json,
        command) -> None:
    """Start CMD (given after `--`) on HOST, or on this machine with `local`."""
    from rgt.controller import cells, launch, rgttoml
    from rgt.controller.app import check_host

    if host != "local":
        check_host(host)
    if ssh_config:
        ssh_config = os.path.abspath(os.path.expanduser(ssh_config))

    project = rgttoml.load(code_dir)
    toml = project.get("run", {})
    plan = []
    if queue_file:
        with open(queue_file, encoding="utf-8") as f:
            plan = cells.parse_queue(f.read(), queue_file)
        command = command or ("queue", os.path.basename(queue_file))
    elif project.get("stages") and not command:
        plan = cells.parse_stages(project["stages"], project["_path"])
        command = ("stages", *[c["name"] for c in plan])
    if not command:
        raise BadInput("no command: put the training command after `--`, e.g. rgt up local -- python train.py")
    run_id = validate_run_id(run_id or toml.get("run") or generate_run_id(_default_name(tuple(command))))
    spec = RunSpec(run_id=run_id, command=list(command), created_at=time.time(),
                   profile=profile or toml.get("profile") or ("local" if host == "local" else "generic-ssh"))
    _merge(spec, toml, ckpt_dir=ckpt_dir, artifacts=list(artifacts) or None, tick_s=tick_s,
           max_restarts=max_restarts, stall_after_s=stall_after_s, start_grace_s=start_grace_s,
           usd_per_hour=usd_per_hour, durable_dir=durable_dir)
    launch.apply_ckpt_options(spec, toml, keep_last, list(ckpt_globs))
    nan_after = click.get_current_context().meta.get("rgt_nan_after", toml.get("nan_after"))
    if nan_after is not None:
        spec.nan_after = nan_after
    if click.get_current_context().meta.get("rgt_allow_pickle"):
        spec.allow_pickle = True  # the box may resume from them; verification still never unpickles
    spec.cells, spec.from_cell = plan, from_cell
    flags = click.get_current_context().meta.get("rgt_progress", {})
    spec.progress_patterns = dict(project.get("progress") or {}, **flags)  # flags win, key by key
    trainer_python = trainer_python or toml.get("trainer_python")
    if trainer_python:
        spec.extra["verify_python"] = trainer_python
    if gpus is None and toml.get("gpus"):
        gpus = ",".join(str(g) for g in toml["gpus"])
    share_gpu = share_gpu or bool(toml.get("share_gpu"))
    if min_free_gb is None:
        min_free_gb = toml.get("min_free_gb")
    if plan:
        spec.command = []
    if gpus:
        spec.gpus, spec.share_gpu = cells.parse_gpus(gpus), share_gpu
    if min_free_gb is not None:
        spec.min_free_bytes = int(min_free_gb * 1024**3)
    notify = project.get("notify")
    if notify:
        spec.notify = dict(notify)
    names = list(secrets) or list(toml.get("secrets") or [])
    if spec.notify.get("webhook_secret") and spec.notify["webhook_secret"] not in names:
        names.append(spec.notify["webhook_secret"])
    spec.secret_names = names
    values = launch.collect_secrets(names)
    profile = _apply_profile(app, spec, host, brief)
    if dry_run:
        app.data({"spec": _public(spec), "secrets": {n: "***" for n in values}, "host": host,
                  "trainer_env": dict(spec.env), "platform_env": spec.extra.get("platform_env", {})})
        return
    transport = app.transport_for(host, port, ssh_config)
    fast_dir = _box_path(transport, profile.fast_dir) if host != "local" and profile.fast_dir else None
    if fast_dir and transport.exists(fast_dir):
        transport = app.transport_for(host, port, ssh_config, root=f"{fast_dir}/.rgt")
    sched_opts = {}
    if profile.launch.scheduler:
        # A scheduler hands out GPUs itself: --gpus is a count there ("2"), or a list whose length counts.
        if walltime:
            sched_opts["time"] = walltime
        if gpus:
            sched_opts["gpus"] = int(gpus) if gpus.strip().isdigit() else len(cells.parse_gpus(gpus))
            spec.gpus, spec.share_gpu = None, False
    elif walltime:
        raise BadInput(f"--time needs a profile with a scheduler (e.g. --profile slurm); {profile.name} has none")
    if not profile.launch.scheduler:  # under a scheduler the login node's python is not the job's
        from rgt.controller import trainerprobe

        trainerprobe.check(app, transport, spec, host, python or toml.get("python"),
                           list(profile.python) or ["python3", "python"])
    req = launch.UpRequest(host=host, spec=spec, code_dir=os.path.abspath(code_dir),
                           python=python or toml.get("python"), secret_values=values,
                           python_candidates=list(profile.python) or ["python3", "python"],
                           heartbeat_timeout_s=heartbeat_timeout_s, port=port, ssh_config=ssh_config,
                           scheduler_opts=sched_opts)
    rec = launch.up(app.registry, transport, req)
    if as_json:
        app.data({"run_id": rec.run_id, "host": rec.host, "run_dir": rec.run_dir})
    app.info(f"run {rec.run_id} is up on {rec.host} ({rec.run_dir})")
    app.info(launch.where_checkpoints(spec, rec.run_dir))
    app.info(f"  rgt status {rec.run_id}   rgt logs -f {rec.run_id}   rgt stop {rec.run_id}")


def _progress(ctx, key: str, value: Optional[str]) -> None:
    """A --progress-* regex, checked here on the laptop (exit 2 naming it), kept for the spec."""
    from rgt.agent.progformats import BadPattern, check_pattern

    if value is None:
        return
    try:
        check_pattern(key, value)
    except BadPattern as e:
        raise BadInput(f"--progress-{key}: {e}") from None
    ctx.meta.setdefault("rgt_progress", {})[key] = value


def _box_path(transport, path: str) -> str:
    """A profile path with $USER / $HOME as the box sees them (e.g. Slurm's /scratch/$USER); no eval."""
    if "$" not in path:
        return path
    res = transport.sh('printf "%s\\n%s\\n" "$USER" "$HOME"')
    user, home = (res.out.decode(errors="replace").splitlines() + ["", ""])[:2]
    for name, value in (("USER", user), ("HOME", home)):
        path = path.replace("${" + name + "}", value).replace("$" + name, value)
    return path


def _apply_profile(app, spec: RunSpec, host: str, brief: bool):
    """Facts from the platform profile into the spec; the briefing is printed before anything runs."""
    from rgt.controller.briefing import briefing_once, danger_summary
    from rgt.controller.envrecipe import apply_recipe, env_recipe
    from rgt.controller.profiles import load_profile

    profile = load_profile(spec.profile)
    text = briefing_once(profile, host, force=brief) or (danger_summary(profile) if profile.danger_clocks else None)
    if text:
        app.info(text)
    recipe = env_recipe(profile)
    apply_recipe(spec, recipe)
    for note in recipe.notes:
        app.info(f"note: {note}")
    durable = profile.durable_dir
    if spec.durable_dir is None and durable and "<" not in durable and host != "local":
        spec.durable_dir = durable
    spec.stop_timeout_s = profile.stop_grace_s
    if spec.usd_per_hour is None:
        spec.usd_per_hour = profile.defaults.usd_per_hour
    if profile.defaults.mtbf_s:
        spec.extra.setdefault("mtbf_s", profile.defaults.mtbf_s)
    return profile


def _merge(spec: RunSpec, toml: dict, **flags: Optional[object]) -> None:
    """Flags win over rgt.toml, which wins over the spec's defaults."""
    for key, value in flags.items():
        chosen = value if value is not None else toml.get(key)
        if chosen is not None:
            setattr(spec, key, chosen)
    for key in ("keep_last", "completion_files", "allow_pickle"):
        if key in toml:
            setattr(spec, key, toml[key])


def _public(spec: RunSpec) -> dict:
    import json

    return json.loads(spec.to_json())
