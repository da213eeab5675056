"""Resume is a property of the run: every launch of every agent gets RGT_RESUME_FROM from what is on disk."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import psutil

from rgt.shared.journal import read_journal
from tests.conftest import scaled, wait_until
from tests.helpers import agent_argv, make_run_dir

# A plain loop that saves a torch checkpoint every 10 steps (to SAVE_UNTIL) by rename and starts from RGT_RESUME_FROM.
LOOP = '''\
import os, sys, time
import torch
steps, sleep_s = int(os.environ.get("STEPS", "60")), float(os.environ.get("STEP_SLEEP_S", "0.05"))
save_until = int(os.environ.get("SAVE_UNTIL", "30"))  # then every 100: verification keeps up on a busy box
crash_at = int(os.environ.get("CRASH_AT", "0")) if os.environ.get("RGT_ATTEMPT") == "1" else 0
ck, resume = os.environ["RGT_CKPT_DIR"], os.environ.get("RGT_RESUME_FROM")
start = int(torch.load(resume, weights_only=True)["step"]) if resume else 0
print(f"attempt {os.environ['RGT_ATTEMPT']} resume_from={resume} start={start}", flush=True)
for step in range(start + 1, steps + 1):
    print(f"step={step} loss={1.0 / step:.4f}", flush=True)
    if step % 10 == 0 and (step <= save_until or step % 100 == 0):
        tmp = os.path.join(ck, ".tmp.pt")
        torch.save({"step": step, "w": torch.full((4,), float(step))}, tmp)
        os.replace(tmp, os.path.join(ck, f"step_{step:06d}.pt"))
    if step == crash_at:
        sys.exit(3)
    time.sleep(sleep_s)
'''
ATTEMPT_LINE = re.compile(r"^attempt (\d+) resume_from=(\S+) start=(\d+)$", re.M)


def attempt_line(run, attempt: int):
    """(resume_from, start step) the trainer printed for ``attempt``, or None before it started."""
    try:
        text = (run / "logs" / "trainer.log").read_text()
    except OSError:
        return None
    for a, resume, start in ATTEMPT_LINE.findall(text):
        if int(a) == attempt:
            return (None if resume == "None" else resume), int(start)
    return None


def launch_record(run, attempt: int) -> dict:
    recs = read_journal(str(run / "events.msgpack")).records
    return next(r for r in recs if r.get("kind") == "launch" and r.get("attempt") == attempt)


def status(run) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def start_agent(pyz, run) -> subprocess.Popen:
    """The agent as onstart or `rgt resume` starts it: its own session, no terminal."""
    return subprocess.Popen([*agent_argv(pyz), "daemon", str(run)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def test_stop_then_resume_gives_the_new_attempt_the_newest_verified_checkpoint(env):
    (env.project / "train.py").write_text(LOOP)
    env.rgt("up", "local", "--run", "sr", "--tick-s", "0.3", "--", sys.executable, "train.py", check=True,
            extra_env={"STEPS": "4000", "STEP_SLEEP_S": "0.05"})
    run = env.run_dir("sr")
    wait_until(lambda: ((status(run).get("checkpoint") or {}).get("last_step") or 0) >= 20, 120,
               what="a verified checkpoint at step 20 or later")
    env.rgt("stop", "sr", check=True)
    wait_until(lambda: env.marker("sr"), 120, what="STOPPED")
    target = status(run)["checkpoint"]["resume_from"]
    assert target, "status names the resume target"

    p = env.rgt("resume", "sr", extra_env={"STEPS": "60"})
    assert p.returncode == 0, p.stderr
    said = p.stdout + p.stderr
    assert "no agent holds the run" in said and "started agent pid" in said, said
    resume, start = wait_until(lambda: attempt_line(run, 2), 120, what="attempt 2's first line")
    assert resume and resume.endswith(os.path.basename(target)), (resume, target)
    assert start >= 20
    assert launch_record(run, 2)["resume_from"] == resume, "the journal's launch event names it"


def test_an_agent_killed_9_and_started_again_launches_from_the_checkpoint_on_disk(tmp_path, pyz):
    # Attempt 1 crashes at step 25; the long backoff keeps the first agent from relaunching it itself.
    run = make_run_dir(tmp_path, "k9r", [sys.executable, "train.py"], code={"train.py": LOOP}, tick_s=0.3,
                       settle_s=0.2, backoff_s=600, env={"CRASH_AT": "25", "STEPS": "40"})
    first = start_agent(pyz, run)
    wait_until(lambda: status(run).get("state") == "backoff", 120, what="attempt 1 crashed, in backoff")
    assert launch_record(run, 1)["resume_from"] is None, "the first launch had nothing to resume from"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=scaled(120))

    again = start_agent(pyz, run)
    resume, start = wait_until(lambda: attempt_line(run, 2), 120, what="attempt 2 launched by the new agent")
    assert resume and resume.endswith("step_000020.pt") and start == 20
    assert launch_record(run, 2)["resume_from"] == resume
    wait_until(lambda: (run / "DONE").exists(), 120, what="DONE")
    again.wait(timeout=scaled(300))


def _run_tree(run):
    roots = [status(run).get("agent_pid")]
    try:
        rec = json.loads((run / "trainer.json").read_text())
        roots += [rec.get("waiter_pid"), rec.get("pid")]
    except (OSError, ValueError):
        pass
    found = {}
    for pid in filter(None, roots):
        try:
            p = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        found[p.pid] = p
        found.update({c.pid: c for c in p.children(recursive=True)})
    return list(found.values())


def test_a_container_restart_drill_resumes_from_the_durable_copy_when_the_local_one_is_gone(tmp_path, pyz, tmpfs):
    durable = tmpfs("durable", "size=64m")
    run = make_run_dir(tmp_path, "drill", [sys.executable, "train.py"], code={"train.py": LOOP}, tick_s=0.3,
                       settle_s=0.2, backoff_s=0.5, durable_dir=durable, env={"STEPS": "4000"})
    start_agent(pyz, run)
    wait_until(lambda: ((status(run).get("checkpoint") or {}).get("last_step") or 0) >= 20
               and status(run).get("state") == "running", 120, what="a verified checkpoint, durable copy made")
    procs = _run_tree(run)  # the container dies: agent, waiter, trainer, any verifier
    for p in procs:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=scaled(120))
    index = json.loads((run / "ckpt_index.json").read_text())
    copied = [r for r in index["records"] if (r.get("durable") or {}).get("path")]
    assert copied, "the pipeline copied verified checkpoints to the durable dir"
    for name in os.listdir(run / "ckpt"):
        os.unlink(run / "ckpt" / name)  # the container's own disk did not survive; the volume did

    start_agent(pyz, run)  # onstart reruns the agent
    resume, start = wait_until(lambda: attempt_line(run, 2), 120, what="attempt 2 after the restart")
    assert resume and resume.startswith(durable), resume
    assert start >= 20
    assert launch_record(run, 2)["resume_from"] == resume
