"""SIGUSR1 to the agent (Slurm's --signal=B:USR1@lead) becomes a save request to the trainer, on a local box."""

from __future__ import annotations

import json
import os
import signal
import sys

from rgt.agent import procs
from rgt.shared.journal import read_journal
from tests.conftest import wait_until
from tests.slurmbox import TRAINER


def trainer_log(env, run_id: str) -> str:
    try:
        return (env.run_dir(run_id) / "logs" / "trainer.log").read_text()
    except OSError:
        return ""


def save_requests(env, run_id: str) -> list:
    return [r for r in read_journal(str(env.run_dir(run_id) / "events.msgpack")).records
            if r.get("kind") == "save_request"]


def test_sigusr1_to_the_agent_makes_a_trainer_with_a_handler_save_now_and_go_on(env):
    (env.project / "torch_train.py").write_text(TRAINER)
    env.rgt("up", "local", "--run", "u1", "--tick-s", "0.5", "--", sys.executable, "torch_train.py",
            "--steps", "100000", "--sleep", "0.05", "--save-every", "100000", check=True)
    wait_until(lambda: "step=3 " in trainer_log(env, "u1"), 120, what="the trainer to train")
    os.kill(env.status("u1")["agent_pid"], signal.SIGUSR1)
    text = wait_until(lambda: "SIGUSR1: saved step=" in trainer_log(env, "u1") and trainer_log(env, "u1"), 120,
                      what="the trainer's save on SIGUSR1")
    step = int(text.split("SIGUSR1: saved step=")[1].split()[0])
    assert (env.run_dir("u1") / "ckpt" / f"step_{step}.pt").exists()
    assert [(r["forwarded"], r["reason"]) for r in save_requests(env, "u1")] == [(True, None)]
    assert env.status("u1")["state"] == "running"
    assert env.rgt("stop", "u1").returncode == 0


def test_sigusr1_is_never_passed_to_a_trainer_that_would_die_of_it(env):
    env.rgt("up", "local", "--run", "u2", "--tick-s", "0.5", "--", "python3", "train.py", check=True,
            extra_env={"STEPS": "100000", "STEP_SLEEP_S": "0.05"})
    wait_until(lambda: env.status("u2").get("state") == "running", 120, what="running")
    rec = json.loads((env.run_dir("u2") / "trainer.json").read_text())
    assert procs.catches(rec["pid"], signal.SIGUSR1) is False  # Python's default: SIGUSR1 kills
    os.kill(env.status("u2")["agent_pid"], signal.SIGUSR1)
    seq = env.status("u2")["seq"]
    wait_until(lambda: env.status("u2").get("seq", 0) >= seq + 4, 120, what="four more ticks")
    assert procs.is_same_process(rec["pid"], rec["start_time"]), "the trainer must not have got SIGUSR1"
    assert env.status("u2")["state"] == "running" and not save_requests(env, "u2")  # held: it may start later
    assert env.rgt("stop", "u2").returncode == 0
