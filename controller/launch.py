"""The `rgt up` flow on the laptop, the same for every transport: check, sync, pyz, spec, secrets, start, heartbeat."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from rgt.shared.errors import BadInput, GateRefused, RgtError
from rgt.shared.secrets import NAME_RE, format_secrets
from rgt.shared.spec import RunSpec

from . import pyz
from .observe import poll
from .registry import Registry, RunRecord
from .state import state_dir
from .transport.base import Transport

CODE_EXCLUDES = (".git", ".venv", "__pycache__", "rgt-pulls", "*.pyc")


@dataclass
class UpRequest:
    """Everything `rgt up` was asked for, after flags and rgt.toml are merged."""

    host: str
    spec: RunSpec
    code_dir: str
    python_candidates: List[str] = field(default_factory=lambda: ["python3", "python"])
    python: Optional[str] = None
    secret_values: Dict[str, str] = field(default_factory=dict)
    heartbeat_timeout_s: float = 60.0
    port: Optional[int] = None
    ssh_config: Optional[str] = None
    scheduler_opts: Dict[str, Any] = field(default_factory=dict)  # e.g. Slurm's time and gpus, from flags
    record_extra: Dict[str, Any] = field(default_factory=dict)  # into the registry record (a sweep's cell)
    before_start: Optional[Callable[[Transport, str], None]] = None  # (transport, run_dir), e.g. push a checkpoint


def apply_ckpt_options(spec: RunSpec, toml: Dict[str, Any], keep_last: Optional[int], globs: List[str]) -> None:
    """--ckpt-dir, --keep-last, --ckpt-glob and --artifacts checked into the spec (one-line errors, exit 2)."""
    d = spec.ckpt_dir
    parts = os.path.normpath(d).split(os.sep) if d else [""]
    if os.path.normpath(d) == "/" or not os.path.isabs(d) and (parts[0] in ("", ".", "..", "abs") or ".." in parts):
        raise BadInput(f"--ckpt-dir {d!r}: give a dir inside the run dir (e.g. ckpt, out) or an absolute one "
                       "(e.g. /root/autodl-tmp/out); '.', '..' and abs/ are not allowed")
    if keep_last is not None or "keep_last" in toml:
        spec.keep_last = keep_last if keep_last is not None else spec.keep_last
        spec.prune_user_dirs = True  # the user asked for pruning: their own folders rotate too
    for g in list(toml.get("ckpt_globs") or []) + globs:
        if not isinstance(g, str) or not g.strip("/") or "/" in g.rstrip("/"):
            raise BadInput(f"checkpoint pattern {g!r}: give a file name glob (*.bin) or a dir glob ending in / "
                           "(run-*/)")
        if g not in spec.ckpt_globs:
            spec.ckpt_globs.append(g)
    for a in spec.artifacts:
        if ".." in a.replace("\\", "/").split("/"):
            raise BadInput(f"--artifacts {a!r}: '..' is not allowed")
        if os.path.isabs(a) and not (os.path.isabs(d) and a.startswith(os.path.join(os.path.normpath(d), ""))):
            raise BadInput(f"--artifacts {a!r} is absolute: it must lie inside the absolute --ckpt-dir "
                           "(relative globs are under the code dir; $RGT_CKPT_DIR/... names the checkpoint dir)")


def box_ckpt_dir(spec: RunSpec, run_dir: str) -> str:
    """$RGT_CKPT_DIR as the box names it."""
    return os.path.normpath(spec.ckpt_dir if os.path.isabs(spec.ckpt_dir) else f"{run_dir}/{spec.ckpt_dir}")


def where_checkpoints(spec: RunSpec, run_dir: str) -> str:
    """The line `rgt up` prints: where the agent looks for checkpoints."""
    globs = " ".join(spec.ckpt_globs)
    return (f"checkpoints: looked for in {box_ckpt_dir(spec, run_dir)} ($RGT_CKPT_DIR) and, as new files "
            f"matching {globs}, under {run_dir}/code (the trainer's working dir)")


def collect_secrets(names: List[str], env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Secret values from the local environment, by name; a missing one is an error naming it."""
    env = dict(os.environ if env is None else env)
    out = {}
    for name in names:
        if "=" in name:  # NAME=value typed by mistake: never echo the value back
            raise BadInput(f"--secret takes a NAME, not NAME=value: export {name.split('=', 1)[0]!r} in this "
                           "shell and pass its name (what you typed after '=' is not shown)")
        if not NAME_RE.match(name):
            raise BadInput(f"bad secret name {name!r}: use letters, digits and _")
        if name not in env:
            raise BadInput(f"secret {name} is not set in this shell's environment")
        out[name] = env[name]
    return out


def ensure_pyz(transport: Transport, root: str) -> str:
    """The agent archive's box path, hashed there against its name and replaced atomically when it differs.

    One round trip; a missing, truncated or replaced archive (an interrupted upload, a full disk) is sent again.
    """
    return pyz.ensure(transport, root)


def sync_code(transport: Transport, code_dir: str, run_dir: str) -> None:
    """Rsync the project into the run's own code/ dir, honouring .gitignore and the fixed excludes."""
    args = ["-a", "--delete", "--filter=:- .gitignore"]
    args += [f"--exclude={x}" for x in CODE_EXCLUDES]
    for inner in (transport.root if transport.name == "local" else None, str(state_dir())):
        # A box root or state dir inside the project must not be copied into the box itself.
        if inner and os.path.abspath(inner).startswith(os.path.abspath(code_dir) + os.sep):
            args.append(f"--exclude=/{os.path.relpath(inner, code_dir)}")
    args += [code_dir.rstrip("/") + "/", transport.rsync_target(f"{run_dir}/code/")]
    res = transport.rsync(args)
    if res.returncode != 0:
        why = res.stderr.decode(errors="replace").strip()[:300]
        raise RgtError(f"syncing the code to {transport.name} failed: {why}")


def box_spec(transport: Transport, rec: RunRecord) -> Optional[Dict[str, Any]]:
    """The run's spec.json as the box has it (None when absent); an unreadable one is a one-line error."""
    raw = transport.read_file(f"{rec.run_dir}/spec.json", max_bytes=4 << 20)  # the box's: bounded
    if raw is None:
        return None
    try:
        spec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RgtError(f"{rec.run_dir}/spec.json on {transport.name} is not JSON") from None
    if not isinstance(spec, dict):
        raise RgtError(f"{rec.run_dir}/spec.json on {transport.name} is not a JSON object")
    return spec


def adopt_spec(rec: RunRecord, spec: Dict[str, Any]) -> None:
    """Fill a registry record from a box's spec: profile, python (the archive's runner), created_at."""
    rec.profile = spec.get("profile") or rec.profile
    rec.python = rec.python or spec.get("python")
    rec.created_at = spec.get("created_at") or rec.created_at


def wait_heartbeat(transport: Transport, rec: RunRecord, timeout_s: float, after_seq: int = 0,
                   agent_pid: Optional[int] = None) -> None:
    """Wait for a status write by the new agent; a clear error naming agent.log otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        obs = poll(transport, rec)
        if obs.status is not None and obs.status.seq > after_seq and (
                agent_pid is None or obs.status.agent_pid == agent_pid) and obs.status.state != "stopping":
            # "stopping" right after a start is the agent finishing a refusal: wait for the verdict.
            lf = obs.status.trainer.last_failure
            if obs.status.state == "failed" and obs.status.trainer.attempt <= 1 and lf is not None and (
                    lf.class_ in (None, "disk_gate_abort")):
                raise GateRefused(f"run {rec.run_id} was refused on {transport.name}: {lf.evidence}")
            return
        time.sleep(0.2)
    tail = transport.sh('tail -n 5 -- "$1/logs/agent.log" "$1/logs/agent.out" 2>/dev/null', rec.run_dir)
    raise RgtError(
        f"the agent wrote no heartbeat within {timeout_s:.0f}s; see {rec.run_dir}/logs/agent.log on "
        f"{transport.name}: {tail.out.decode(errors='replace').strip()[-400:]}"
    )


def up(registry: Registry, transport: Transport, req: UpRequest) -> RunRecord:
    """Put the run on the box and return once the agent's first heartbeat is there."""
    spec = req.spec.validate()
    from .slurm import info, scheduler_for

    sched = scheduler_for(spec.profile)  # the profile's `[launch] scheduler`: None means setsid/nohup
    if sched is not None:
        sched.prepare(spec, req.code_dir, req.scheduler_opts, info)
    root = transport.root
    run_dir = f"{root}/runs/{spec.run_id}"
    if transport.exists(f"{run_dir}/spec.json"):
        from .agentprobe import exists_message  # says at once whether an agent holds it now

        there = RunRecord(run_id=spec.run_id, host=req.host, root=root, port=req.port, ssh_config=req.ssh_config)
        raise BadInput(exists_message(transport, there, req.python or transport.find_python(req.python_candidates)[0]))
    python = req.python or transport.find_python(req.python_candidates)[0]
    spec.python = spec.python or python
    res = transport.run(["mkdir", "-p", f"{run_dir}/code", f"{run_dir}/logs"])
    if res.rc != 0:
        raise RgtError(f"cannot create {run_dir} on {transport.name}: {res.err.decode(errors='replace').strip()[:300]}")
    transport.run(["chmod", "700", run_dir])
    ckpt = box_ckpt_dir(spec, run_dir)
    # The pull reads it with this login too: a dir it cannot list would hold checkpoints rgt never brings home.
    made = transport.sh('mkdir -p -- "$1" && test -w "$1" && test -x "$1" && test -r "$1"', ckpt)
    if made.rc != 0:
        why = made.err.decode(errors="replace").strip().splitlines()
        raise BadInput(f"--ckpt-dir {ckpt} cannot be created, written or read on {transport.name}"
                       f"{': ' + why[-1][:200] if why else ' (no permission)'}; pick another dir")
    sync_code(transport, req.code_dir, run_dir)
    from .scriptcheck import check as check_script

    check_script(transport, f"{run_dir}/code", spec.command)  # refused (exit 2) before anything starts
    archive = ensure_pyz(transport, root)
    if req.secret_values:
        transport.write_file(f"{run_dir}/secrets.env", format_secrets(req.secret_values).encode(), "600")
    transport.write_file(f"{run_dir}/spec.json", spec.to_json(), "644")
    rec = RunRecord(run_id=spec.run_id, host=req.host, root=root, profile=spec.profile, port=req.port,
                    ssh_config=req.ssh_config, python=python, extra=dict(req.record_extra))
    registry.save(rec)
    if req.before_start is not None:
        req.before_start(transport, run_dir)
    if sched is not None:
        sched.start(registry, transport, rec, python, archive, spec, req.heartbeat_timeout_s, info)
        return rec
    pid = transport.start_agent(run_dir, python, archive, drop_env=spec.secret_names)
    wait_heartbeat(transport, rec, req.heartbeat_timeout_s, agent_pid=pid)
    return rec


def resume(transport: Transport, rec: RunRecord, timeout_s: float = 60.0) -> str:
    """Start the agent again when none holds the run (the box's lock says, not the heartbeat's age).

    It adopts a live trainer or resumes from the newest verified checkpoint; a DONE run is left alone.
    """
    python = rec.python or transport.find_python(["python3", "python"])[0]
    archive = ensure_pyz(transport, rec.root)
    from .slurm import info, scheduler_for

    sched = scheduler_for(rec.profile)
    if sched is not None:  # the agent runs on a compute node: the scheduler's view and the status decide
        obs = poll(transport, rec)
        if transport.exists(f"{rec.run_dir}/DONE"):
            return f"run {rec.run_id} is DONE; nothing to resume"
        if obs.status is not None and obs.view not in ("stale", "failed", "stopped"):
            return f"run {rec.run_id} is {obs.view} with a live agent; nothing to do"
        return sched.resume(Registry(), transport, rec, python, archive, timeout_s, info)
    from .agentprobe import resume as resume_unless_held

    secret_names = list((box_spec(transport, rec) or {}).get("secret_names") or [])
    return resume_unless_held(transport, rec, python, archive, secret_names, timeout_s)
