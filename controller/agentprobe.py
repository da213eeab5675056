"""`rgt resume` and a second `rgt up` on the laptop: ask the box who holds the run (its lock), then act on that.

Never decided from a heartbeat's age: an agent killed a moment ago leaves a fresh status behind, and
a live one may be slow. What the box says is untrusted: read as bounded JSON, checked field by field.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, NamedTuple, Optional

from rgt.shared.errors import RgtError

from .observe import poll
from .registry import RunRecord
from .transport.base import Transport

MAX_PROBE_BYTES = 64 * 1024
# Exit 0 while pid $1 lives and is no zombie (an exited agent may wait unreaped under a lazy pid 1).
ALIVE = 's=$(cat "/proc/$1/stat" 2>/dev/null) || exit 1; case "${s##*) }" in Z*) exit 1;; esac; exit 0'


class Found(NamedTuple):
    """What the probe saw on the box."""

    marker: Optional[str]
    agent_held: bool  # a process holds agent.lock (the kernel says so)
    agent_pid: Optional[int]
    agent_alive: bool  # and it is the pid and start time written in the lock
    attempt: Optional[int]
    trainer_pid: Optional[int]
    trainer_alive: bool
    waiter_alive: bool
    exit_code: Optional[int]
    signal: Optional[str]


def _int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 31 else None


def _str(v: Any) -> Optional[str]:
    return v[:40] if isinstance(v, str) and v.isprintable() else None


def parse(raw: bytes) -> Found:
    """The probe's JSON line, or a one-line RgtError when the box sent something else."""
    try:
        d = json.loads(raw[:MAX_PROBE_BYTES].decode("utf-8").strip().splitlines()[-1])
    except (UnicodeDecodeError, ValueError, IndexError):
        raise RgtError("the box's agent probe answered something that is not its JSON line") from None
    if not isinstance(d, dict):
        raise RgtError("the box's agent probe answered something that is not a JSON object")
    agent = d.get("agent") if isinstance(d.get("agent"), dict) else {}
    trainer = d.get("trainer") if isinstance(d.get("trainer"), dict) else {}
    ended = d.get("ended") if isinstance(d.get("ended"), dict) else {}
    marker = d.get("marker") if d.get("marker") in ("DONE", "FAILED", "STOPPED") else None
    return Found(marker, agent.get("held") is True, _int(agent.get("pid")), agent.get("alive") is True,
                 _int(trainer.get("attempt")), _int(trainer.get("pid")), trainer.get("alive") is True,
                 d.get("waiter_alive") is True, _int(ended.get("exit_code")), _str(ended.get("signal")))


def probe(transport: Transport, rec: RunRecord, python: str) -> Found:
    """Run `pyz probe RUN_DIR` on the box (the archive is copied there first if that hash is absent)."""
    res = transport.run_agent(["probe", rec.run_dir], timeout_s=60, python=python)
    if res.rc != 0:
        why = res.err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {res.rc}"]
        raise RgtError(f"cannot probe run {rec.run_id} on {transport.name}: {why[0][:300]}")
    return parse(res.out)


def describe(f: Found) -> str:
    """What the probe found, in words: the agent, then the trainer."""
    if f.agent_alive:
        agent = f"agent pid {f.agent_pid} holds agent.lock and is alive"
    elif f.agent_held:
        agent = f"agent.lock is held by a process that is not the agent it names (pid {f.agent_pid})"
    else:
        agent = "no agent holds the run" + (f" (agent pid {f.agent_pid} is gone)" if f.agent_pid else "")
    if f.trainer_alive:
        trainer = f"the trainer of attempt {f.attempt} (pid {f.trainer_pid}) is still running"
    elif f.attempt is None:
        trainer = "no trainer was started yet"
    elif f.exit_code is not None or f.signal:
        how = f"signal {f.signal}" if f.signal else f"exit code {f.exit_code}"
        trainer = f"attempt {f.attempt} ended with {how}"
    else:
        trainer = f"the trainer of attempt {f.attempt} is gone, its end unrecorded"
    ended = f"; the run had ended {f.marker}" if f.marker else ""
    return f"{agent}; {trainer}{ended}"


def exists_message(transport: Transport, rec: RunRecord, python: str) -> str:
    """Why `rgt up` refuses a run id that is already on the box, with what holds it now."""
    head = f"run {rec.run_id} already exists on {transport.name}"
    try:
        f = probe(transport, rec, python)
    except RgtError:
        return f"{head}: pick another --run, or `rgt resume {rec.run_id}`"
    if f.agent_alive:
        return f"{head} and is alive ({describe(f)}): `rgt status {rec.run_id}`, or pick another --run"
    if f.marker == "DONE":
        return f"{head} and is DONE: pick another --run, or `rgt pull {rec.run_id}`"
    return f"{head} ({describe(f)}): `rgt resume {rec.run_id}` continues it, or pick another --run"


def resume(transport: Transport, rec: RunRecord, python: str, archive: str, secret_names: list,
           timeout_s: float = 60.0) -> str:
    """Start an agent when none holds the run; say what was found and what the new agent did."""
    f = probe(transport, rec, python)
    if f.marker == "DONE":
        return f"run {rec.run_id} is DONE; nothing to resume"
    if f.agent_alive:
        obs = poll(transport, rec)
        seen = f"; status {obs.view}, heartbeat {obs.age_s:.0f}s ago" if obs.status is not None else ""
        return f"run {rec.run_id}: {describe(f)}{seen}; nothing to do"
    before = poll(transport, rec)
    pid = transport.start_agent(rec.run_dir, python, archive, resume=True, drop_env=secret_names)
    st = wait_started(transport, rec, pid, before.status.seq if before.status else 0, timeout_s)
    if st is None:
        return f"run {rec.run_id}: {describe(f)}; agent pid {pid} found the run already taken: " \
               f"{_agent_out(transport, rec)}"
    if f.trainer_alive and st.trainer.attempt == f.attempt:
        did = f"it adopted attempt {f.attempt} (trainer pid {f.trainer_pid})"
    elif st.state == "unknown":
        did = "it is verifying the last checkpoints before it decides (see `rgt status`)"
    else:
        target = st.checkpoint.resume_from
        did = f"it is at attempt {st.trainer.attempt} ({st.state})" + (
            f", resuming from {target}" if target else ", with no verified checkpoint to resume from")
    return f"run {rec.run_id}: {describe(f)}; started agent pid {pid}: {did}"


def wait_started(transport: Transport, rec: RunRecord, pid: int, after_seq: int, timeout_s: float):
    """The first status written by agent ``pid``; None when that agent exited first (another took the run)."""
    deadline = time.monotonic() + timeout_s
    checked = time.monotonic()
    while time.monotonic() < deadline:
        obs = poll(transport, rec)
        st = obs.status
        if st is not None and st.seq > after_seq and st.agent_pid == pid and st.state != "stopping":
            return st
        if time.monotonic() - checked >= 1.0:
            checked = time.monotonic()
            if transport.sh(ALIVE, str(pid)).rc != 0:
                obs = poll(transport, rec)  # it may have written once and ended (a run that was over)
                if obs.status is not None and obs.status.agent_pid == pid:
                    return obs.status
                return None
        time.sleep(0.2)
    raise RgtError(f"agent pid {pid} wrote no heartbeat within {timeout_s:.0f}s; see {rec.run_dir}/logs/agent.log "
                   f"on {transport.name}: {_agent_out(transport, rec)}")


def _agent_out(transport: Transport, rec: RunRecord) -> str:
    res = transport.sh('tail -n 3 -- "$1/logs/agent.out" 2>/dev/null', rec.run_dir)
    text = " | ".join(x for x in res.out.decode(errors="replace").splitlines() if x.strip())
    return "".join(ch if ch.isprintable() else "?" for ch in text)[-400:] or "(agent.out is empty)"


def found_dict(f: Found) -> Dict[str, Any]:
    """The probe as data (for --json)."""
    return f._asdict()
