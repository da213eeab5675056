"""Slurm as the way the agent starts (laptop side): sbatch the agent as a batch job, scancel; see slurmview.

Chosen by a profile field (``[launch] scheduler = "slurm"``), never by a profile's name. The job runs
``python3 -I <pyz> daemon RUN_DIR --resume``: the agent adopts a live trainer or resumes from the newest
verified checkpoint, and exits 0 at once for a DONE run. Every Slurm command runs on the login host
through the run's transport; the run dir must be on a filesystem the login host and the nodes share.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional

import click

from rgt.shared.errors import BadInput, RgtError, TransportError

from .registry import Registry, RunRecord
from .slurmview import JOB_FILE, JOB_ID_RE, RUNNING, WAITING, job_of, query
from .transport.base import Transport

DEFAULT_LEAD_S = 120  # USR1 this long before the walltime when no save was ever measured
LEAD_MIN_S, LEAD_MAX_S = 60, 3600
PENDING_GRACE_S = 15.0  # how long `rgt up` waits for a pending job before it hands back the prompt
SCRIPT_NAME = "slurm-job.sh"
TIME_RE = re.compile(r"(UNLIMITED|INFINITE|\d+(-\d+)?(:\d+){0,2})\Z")
WORD_RE = re.compile(r"[A-Za-z0-9_.,+-]{1,128}\Z")
TOML_KEYS = {"time": str, "gpus": int, "partition": str, "account": str, "signal_lead_s": int, "sbatch_args": list}
Echo = Callable[[str], None]

# The save cost the trainer helper measured: this run's own (resumed, reassigned), else the box's newest.
SAVE_COSTS = ('cat -- "$1/helper/progress.json" 2>/dev/null; echo; '
              'ls -t -- "$2"/runs/*/helper/progress.json 2>/dev/null | head -n 8 | '
              'while IFS= read -r f; do cat -- "$f" 2>/dev/null; echo; done')
MARKERS = 'for m in DONE FAILED STOPPED; do if [ -e "$1/$m" ]; then echo "$m"; exit 0; fi; done'


@dataclass
class SlurmOptions:
    """What the job asks Slurm for: flags win over rgt.toml's [slurm] table."""

    time: Optional[str] = None  # sbatch --time: "90", "4:00:00", "1-12", ...
    gpus: Optional[int] = None  # --gres=gpu:N
    partition: Optional[str] = None
    account: Optional[str] = None
    signal_lead_s: Optional[int] = None  # else measured (signal_lead_s below)
    sbatch_args: List[str] = field(default_factory=list)  # more options, e.g. ["--mem=32G"]

    def validate(self) -> SlurmOptions:
        """BadInput for what sbatch would refuse or misread."""
        if self.time is not None and not TIME_RE.match(self.time):
            raise BadInput(f"bad --time {self.time!r}: use minutes, H:MM:SS or D-HH[:MM[:SS]] as sbatch does")
        if self.gpus is not None and self.gpus < 0:
            raise BadInput(f"bad gpus {self.gpus}: a count of GPUs, 0 or more")
        for name in ("partition", "account"):
            value = getattr(self, name)
            if value is not None and not WORD_RE.match(value):
                raise BadInput(f"bad slurm {name} {value!r}")
        if self.signal_lead_s is not None and not 1 <= self.signal_lead_s <= 65535:
            raise BadInput("slurm signal_lead_s must be 1 to 65535 seconds")
        for arg in self.sbatch_args:
            if not isinstance(arg, str) or not arg.startswith("--") or "\n" in arg:
                raise BadInput(f"bad sbatch argument {arg!r}: only --options (the script is rgt's)")
        return self


def options_from(project: Dict[str, Any], **flags: Any) -> SlurmOptions:
    """rgt.toml's [slurm] table (``project`` is rgttoml.load's dict) under the flags that were given."""
    from .rgttoml import check_table

    merged = dict(check_table(project, "slurm", TOML_KEYS))
    merged.update({k: v for k, v in flags.items() if v is not None})
    return SlurmOptions(**{f.name: merged[f.name] for f in fields(SlurmOptions) if f.name in merged}).validate()


def signal_lead_s(save_cost_s: Optional[float]) -> int:
    """How long before the walltime the agent gets USR1: two saves plus a minute, 120 s when none was measured.

    One save for the checkpoint itself, one for the agent to hash and verify it, and a minute for the
    step in flight; Slurm may signal up to a minute early anyway, which only adds margin.
    """
    if save_cost_s is None or not math.isfinite(save_cost_s) or save_cost_s <= 0:
        return DEFAULT_LEAD_S
    return int(min(LEAD_MAX_S, max(LEAD_MIN_S, math.ceil(2 * save_cost_s + 60))))


def measured_save_cost(transport: Transport, root: str, run_dir: str) -> Optional[float]:
    """save_cost_s from the helper's progress.json: this run's, else the newest of the box's runs; None."""
    try:
        res = transport.sh(SAVE_COSTS, run_dir, root)
    except TransportError:
        return None
    for line in res.out.decode(errors="replace").splitlines():
        try:
            cost = json.loads(line).get("save_cost_s")
        except (ValueError, AttributeError):
            continue
        if isinstance(cost, (int, float)) and not isinstance(cost, bool) and math.isfinite(cost) and cost > 0:
            return float(cost)
    return None


def batch_script(run_id: str, run_dir: str, python: str, archive: str) -> bytes:
    """The job's script: `exec`, so the agent is the batch shell and --signal=B:USR1 reaches it."""
    q = shlex.quote
    return (
        "#!/bin/sh\n"
        f"# rgt: the agent of run {run_id} as a Slurm batch job (written by rgt; sbatch keeps its own copy).\n"
        "# --resume: a requeued job adopts or resumes the run; a DONE run makes the agent exit 0 at once.\n"
        "# RGT_JOB_SCHEDULER: on SIGTERM (the job ends) the agent passes it on to the trainer and waits for it.\n"
        f"cd {q(run_dir)} || exit 1\n"
        "RGT_JOB_SCHEDULER=slurm; export RGT_JOB_SCHEDULER\n"
        f"exec {q(python)} -I {q(archive)} daemon {q(run_dir)} --resume\n"
    ).encode()


def sbatch_argv(run_id: str, run_dir: str, script: str, opts: SlurmOptions, lead_s: int) -> List[str]:
    """The argv of sbatch: requeue, USR1 before the walltime, output appended into the run's logs."""
    out = run_dir.replace("%", "%%") + "/logs/slurm-%j.out"  # %% keeps a literal % out of Slurm's patterns
    argv = ["sbatch", "--parsable", f"--job-name=rgt-{run_id}", "--requeue", f"--signal=B:USR1@{lead_s}",
            "--open-mode=append", f"--output={out}", f"--chdir={run_dir}"]
    if opts.time:
        argv.append(f"--time={opts.time}")
    if opts.gpus:
        argv.append(f"--gres=gpu:{opts.gpus}")
    if opts.partition:
        argv.append(f"--partition={opts.partition}")
    if opts.account:
        argv.append(f"--account={opts.account}")
    return [*argv, *opts.sbatch_args, script]


def submit(transport: Transport, rec: RunRecord, python: str, archive: str, opts: SlurmOptions) -> Dict[str, Any]:
    """Write the script into the run dir, sbatch it, and remember the job (registry extra and slurm.json)."""
    cost = measured_save_cost(transport, rec.root, rec.run_dir)
    lead = opts.signal_lead_s or signal_lead_s(cost)
    script = f"{rec.run_dir}/{SCRIPT_NAME}"
    transport.write_file(script, batch_script(rec.run_id, rec.run_dir, python, archive), "700")
    argv = sbatch_argv(rec.run_id, rec.run_dir, script, opts, lead)
    res = transport.run(argv, timeout_s=120)
    words = res.out.decode(errors="replace").split()
    job_id = words[-1].split(";")[0] if words else ""
    if res.rc != 0 or not JOB_ID_RE.match(job_id):
        if res.rc == 127:
            raise RgtError(f"sbatch is not on the PATH of {transport.name}: is it a Slurm login node?")
        err = res.err.decode(errors="replace").strip().splitlines()
        raise RgtError(f"sbatch on {transport.name} refused the job of run {rec.run_id}: "
                       f"{err[-1] if err else f'exit {res.rc}'}")
    old = job_of(rec) or {}
    job = {"scheduler": "slurm", "job_id": job_id, "submitted_at": time.time(), "signal_lead_s": lead,
           "save_cost_s": cost, "options": asdict(opts), "script": script, "sbatch": argv[1:-1],
           "output": f"{rec.run_dir}/logs/slurm-{job_id}.out",
           "history": [*old.get("history", []), *([old["job_id"]] if old.get("job_id") else [])]}
    transport.write_file(f"{rec.run_dir}/{JOB_FILE}", (json.dumps(job, indent=1, sort_keys=True) + "\n").encode(),
                         "644")
    rec.extra = dict(rec.extra or {}, slurm=job)
    return job


def pending_grace_s() -> float:
    """PENDING_GRACE_S, or RGT_SLURM_PENDING_GRACE_S."""
    try:
        return float(os.environ.get("RGT_SLURM_PENDING_GRACE_S", PENDING_GRACE_S))
    except ValueError:
        return PENDING_GRACE_S


def _tail(transport: Transport, path: str) -> str:
    try:
        res = transport.sh('tail -n 5 -- "$1" 2>/dev/null', path)
    except TransportError:
        return ""
    return res.out.decode(errors="replace").strip()[-400:]


def wait_started(transport: Transport, rec: RunRecord, job: Dict[str, Any], timeout_s: float, echo: Echo,
                 after_seq: int = 0) -> str:
    """Until the agent's first heartbeat in the job, or the job pends: then "pending" (not an error)."""
    from .launch import wait_heartbeat
    from .observe import poll

    start = time.monotonic()
    job_id = job["job_id"]
    while True:
        waited_s = time.monotonic() - start
        sched = query(transport, job_id)
        state = sched["state"]
        if state in RUNNING:
            wait_heartbeat(transport, rec, max(1.0, timeout_s - waited_s), after_seq=after_seq)
            return "running"
        if state in WAITING and waited_s > min(pending_grace_s(), timeout_s):
            echo(f"slurm job {job_id} is {state} ({sched.get('reason') or 'no reason given'}): the agent starts "
                 f"when the job does; `rgt status {rec.run_id}` shows both")
            return "pending"
        if state is not None and state not in WAITING:  # over already: a very short run, or a refused start
            obs = poll(transport, rec)
            if obs.status is not None and obs.status.seq > after_seq:
                return obs.status.state
            raise RgtError(f"slurm job {job_id} ended {state} before the agent wrote a heartbeat; see "
                           f"{job.get('output')} on {transport.name}: {_tail(transport, job.get('output', ''))}")
        if waited_s > timeout_s:
            raise RgtError(f"slurm job {job_id} did not start within {timeout_s:.0f}s ({state})")
        time.sleep(0.5)


class Slurm:
    """The scheduler seam `controller/launch.py` calls when the profile says ``scheduler = "slurm"``."""

    @staticmethod
    def prepare(spec: Any, code_dir: str, flags: Dict[str, Any], echo: Echo) -> None:
        """Before anything is copied: the job's options into spec.extra; GPUs are Slurm's to hand out."""
        from .rgttoml import load

        opts = options_from(load(code_dir), **flags)
        if spec.gpus and opts.gpus is None:
            opts.gpus = len(spec.gpus)
            echo(f"note: under Slurm, --gpus asks for a count: gres gpu:{opts.gpus}; Slurm picks the devices")
        spec.gpus, spec.share_gpu = None, False  # CUDA_VISIBLE_DEVICES comes from Slurm's gres
        spec.extra["slurm"] = asdict(opts)

    @staticmethod
    def start(registry: Registry, transport: Transport, rec: RunRecord, python: str, archive: str, spec: Any,
              timeout_s: float, echo: Echo) -> str:
        """Submit the agent with sbatch, keep the job in the registry, wait for its heartbeat (or report it pending)."""
        opts = SlurmOptions(**spec.extra.get("slurm", {}))
        job = submit(transport, rec, python, archive, opts)
        registry.save(rec)
        echo(f"submitted slurm job {job['job_id']} on {transport.name} (signal USR1 {job['signal_lead_s']}s before "
             f"the walltime; output {job['output']})")
        return wait_started(transport, rec, job, timeout_s, echo)

    @staticmethod
    def resume(registry: Registry, transport: Transport, rec: RunRecord, python: str, archive: str,
               timeout_s: float, echo: Echo) -> str:
        """Submit the job again unless one is queued or running (the caller leaves a DONE run alone)."""
        job = job_of(rec, transport)
        if job is not None:
            sched = query(transport, job["job_id"])
            if sched["state"] in WAITING | RUNNING:
                return f"run {rec.run_id}: slurm job {job['job_id']} is {sched['state']}; nothing to do"
        from .observe import poll

        obs = poll(transport, rec)
        job = submit(transport, rec, python, archive, SlurmOptions(**(job or {}).get("options", {})))
        registry.save(rec)
        state = wait_started(transport, rec, job, timeout_s, echo, after_seq=obs.status.seq if obs.status else 0)
        return f"run {rec.run_id}: slurm job {job['job_id']} submitted ({state})"


def scheduler_for(profile_name: Optional[str]) -> Optional[type]:
    """The scheduler a profile names in ``[launch] scheduler``, or None for a detached agent."""
    from .profiles import load_profile

    try:
        profile = load_profile(profile_name or "")
    except (BadInput, OSError):
        return None
    return {"slurm": Slurm}.get(profile.launch.scheduler or "")


def _marker(transport: Transport, rec: RunRecord) -> Optional[str]:
    out = transport.sh(MARKERS, rec.run_dir).out.decode(errors="replace").strip()
    return out or None


def _scancel(transport: Transport, *args: str) -> None:
    transport.run(["scancel", *args], timeout_s=60)  # "already completed" is not an error for us


def stop(transport: Transport, rec: RunRecord, reason: str, wait_s: float, echo: Echo) -> Optional[str]:
    """`rgt stop` for a run in a job: ask the agent (stop request, USR2 to wake it), then scancel.

    A pending job is cancelled at once. Returns the line to show, or None when the caller should go on
    with the plain stop (the job is gone or was only pending: the agent archive writes STOPPED).
    """
    job = job_of(rec, transport)
    if job is None:
        return None
    job_id = job["job_id"]
    state = query(transport, job_id)["state"]
    if state in WAITING:
        _scancel(transport, job_id)
        echo(f"slurm job {job_id} was {state}: cancelled before it ran")
        return None
    if state not in RUNNING:
        return None
    if _marker(transport, rec) is None:
        body = json.dumps({"reason": reason, "at": time.time()}).encode()
        transport.write_file(f"{rec.run_dir}/control/stop.json", body, "600")
        _scancel(transport, "--batch", "--signal=USR2", job_id)  # wakes the agent now, on whatever node
    deadline = time.monotonic() + wait_s
    marker = _marker(transport, rec)
    while marker is None and time.monotonic() < deadline:
        time.sleep(0.5)
        marker = _marker(transport, rec)
    _scancel(transport, job_id)  # the agent exits 0 after its marker; this makes sure nothing is left
    if marker is not None:
        return f"run {rec.run_id} ended {marker}; slurm job {job_id} cancelled"
    for _ in range(240):  # Slurm's SIGTERM, then SIGKILL after KillWait: wait for the job to leave the node
        if query(transport, job_id)["state"] not in RUNNING:
            break
        time.sleep(0.5)
    echo(f"the agent did not confirm within {wait_s:.0f}s; slurm job {job_id} cancelled")
    return None


def info(message: str) -> None:
    """A message for a person, on stderr."""
    click.echo(message, err=True)
