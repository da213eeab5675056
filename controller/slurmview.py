"""The Slurm scheduler's view of a run's job (laptop side): squeue, scontrol and sacct in one round trip."""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional

from rgt.shared.errors import TransportError

from .registry import RunRecord
from .transport.base import Transport

JOB_FILE = "slurm.json"  # on the box, beside spec.json: the job, for `rgt attach` and other laptops
JOB_ID_RE = re.compile(r"\d+\Z")
WAITING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD"}
RUNNING = {"CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}

# One round trip for the scheduler's whole view; each command's output ends with its exit code.
QUERY = ('squeue -h -t all -j "$1" -o "%i|%T|%r|%N|%M|%l" 2>&1; echo "@@rgt-rc $?"; '
         'scontrol -o show job "$1" 2>&1; echo "@@rgt-rc $?"; '
         'sacct -n -P -X -j "$1" -o JobID,State,ExitCode,Elapsed,NodeList 2>&1; echo "@@rgt-rc $?"')


def job_of(rec: RunRecord, transport: Optional[Transport] = None) -> Optional[Dict[str, Any]]:
    """The run's current job from the registry; with a transport, from the box's slurm.json for attached runs."""
    job = (rec.extra or {}).get("slurm")
    if isinstance(job, dict) and job.get("job_id"):
        return job
    from .slurm import scheduler_for  # the seam module imports this one

    if transport is None or scheduler_for(rec.profile) is None:
        return None
    try:
        raw = transport.read_file(f"{rec.run_dir}/{JOB_FILE}")
        job = json.loads(raw.decode("utf-8")) if raw else None
    except (TransportError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(job, dict) or not JOB_ID_RE.match(str(job.get("job_id", ""))):
        return None
    rec.extra = dict(rec.extra or {}, slurm=job)
    return job


# -- the scheduler's view -----------------------------------------------------------------------------------
def _sections(text: str) -> List[tuple]:
    out, lines = [], []
    for line in text.splitlines():
        if line.startswith("@@rgt-rc "):
            out.append((int(line.split()[1]) if line.split()[1:] else 1, lines))
            lines = []
        else:
            lines.append(line)
    return out + [(1, [])] * (3 - len(out))


def _none(value: Optional[str]) -> Optional[str]:
    return None if value in (None, "", "None", "(null)", "N/A") else value


def parse_view(job_id: str, text: str) -> Dict[str, Any]:
    """The QUERY answer as one dict: squeue first, scontrol next, sacct last (for jobs slurmctld forgot)."""
    (sq_rc, sq), (sc_rc, sc), (sa_rc, sa) = _sections(text)[:3]
    view: Dict[str, Any] = {"scheduler": "slurm", "job_id": job_id, "state": None, "reason": None, "node": None,
                            "restarts": None, "exit_code": None, "elapsed": None, "time_limit": None,
                            "accounting": None, "source": None, "error": None}
    if sq_rc == 127 and sc_rc == 127:
        view["error"] = "no Slurm commands (squeue, scontrol) on the login host's PATH"
        return view
    row = next((x.split("|") for x in sq if x.split("|")[0] == job_id), None)
    if sq_rc == 0 and row and len(row) >= 6:
        view.update(state=row[1].split()[0], reason=_none(row[2]), node=_none(row[3]), elapsed=row[4],
                    time_limit=row[5], source="squeue")
    pairs = dict(re.findall(r"(\S+?)=(\S*)", " ".join(sc))) if sc_rc == 0 else {}
    if pairs.get("JobId") == job_id:
        view["state"] = view["state"] or pairs.get("JobState")
        view["reason"] = view["reason"] or _none(pairs.get("Reason"))
        view["node"] = view["node"] or _none(pairs.get("NodeList"))
        view["elapsed"] = view["elapsed"] or pairs.get("RunTime")
        view["time_limit"] = view["time_limit"] or pairs.get("TimeLimit")
        view["exit_code"] = pairs.get("ExitCode")
        view["restarts"] = int(pairs["Restarts"]) if pairs.get("Restarts", "").isdigit() else None
        view["source"] = view["source"] or "scontrol"
    joined = " ".join(sa)
    if "accounting storage is disabled" in joined:
        view["accounting"] = "disabled"
    elif sa_rc == 0:
        view["accounting"] = "enabled"
        acct = next((x.split("|") for x in sa if x.split("|")[0] == job_id), None)
        if acct and len(acct) >= 4:
            view["state"] = view["state"] or acct[1].split()[0]
            view["exit_code"] = view["exit_code"] or acct[2]
            view["elapsed"] = view["elapsed"] or acct[3]
            view["source"] = view["source"] or "sacct"
    return view


def query(transport: Transport, job_id: str) -> Dict[str, Any]:
    """squeue, scontrol and sacct for one job in one round trip; TransportError when the login host is gone."""
    res = transport.sh(QUERY, job_id, timeout_s=60)
    return parse_view(job_id, res.out.decode(errors="replace"))


def view_for(transport: Transport, rec: RunRecord) -> Optional[Dict[str, Any]]:
    """The scheduler's view of the run's job, or None (no job on record, or the login host is gone).

    Only the registry is asked whether there is a job: a plain run's `rgt status` pays nothing.
    """
    job = job_of(rec)
    try:
        return query(transport, job["job_id"]) if job else None
    except TransportError:
        return None


def status_lines(rec: RunRecord, view: str, sched: Dict[str, Any]) -> List[str]:
    """Lines that `rgt status` adds for a job; ``view`` is the controller's view of status.json."""
    if sched.get("error"):
        return [f"  slurm job {sched['job_id']}: {sched['error']}"]
    state = sched.get("state")
    line = f"  slurm job {sched['job_id']}: {state or 'no longer known to slurmctld'}"
    if sched.get("reason"):
        line += f" ({sched['reason']})"
    if sched.get("node") and state not in WAITING:
        line += f" on {sched['node']}"
    if sched.get("elapsed") and state in RUNNING:
        line += f", {sched['elapsed']} of {sched.get('time_limit') or '?'}"
    if sched.get("restarts"):
        line += f", requeued {sched['restarts']} time(s)"
    out = [line]
    if view == "no-status" and state in WAITING:
        out.append("  the job has not started yet: no status.json is expected before it runs")
    elif view == "stale" and state in WAITING:
        out.append("  the job waits to run again (requeued or preempted); when it starts, the agent resumes "
                   "the run from its newest verified checkpoint")
    elif view in ("stale", "no-status") and state not in WAITING | RUNNING:
        out.append(f"  the job is over before the agent finished the run: `rgt resume {rec.run_id}` submits it again")
    if state is None and sched.get("accounting") == "disabled":
        out.append("  (Slurm accounting storage is disabled here, so sacct cannot say how the job ended)")
    return out


# -- up, resume, stop -----------------------------------------------------------------------------------------
