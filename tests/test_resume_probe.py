"""`rgt resume` decides from the box (the agent lock, pid and start time), never from the heartbeat's age."""

from __future__ import annotations

import json
import os
import signal

from rgt.agent import procs
from tests.conftest import wait_until

pytest_plugins = ["tests.conftest_ssh"]


def _running(env, run_id):
    return wait_until(lambda: env.status(run_id).get("state") == "running" and env.status(run_id), 120,
                      what=f"{run_id} running")


def test_resume_right_after_kill_9_of_the_agent_starts_one_that_adopts_and_records_the_true_exit(env):
    # A 5 s tick: the dead agent's last heartbeat stays "fresh" (under 3 ticks) while we resume.
    # The trainer holds after its steps until the test has seen the adoption: no race with its own end.
    hold = env.tmp / "hold"
    env.rgt("up", "local", "--run", "adopt", "--tick-s", "5", "--max-restarts", "0", "--", "python3", "train.py",
            check=True, extra_env={"STEPS": "3", "EXIT_CODE": "7", "HOLD_FILE": str(hold)})
    st = _running(env, "adopt")
    rec = json.loads((env.run_dir("adopt") / "trainer.json").read_text())
    os.kill(st["agent_pid"], signal.SIGKILL)
    wait_until(lambda: getattr(procs.proc_stat(st["agent_pid"]), "state", "Z") == "Z", 120, what="the agent gone")

    p = env.rgt("resume", "adopt")
    said = p.stdout + p.stderr
    assert p.returncode == 0, said
    assert f"no agent holds the run (agent pid {st['agent_pid']} is gone)" in said, said
    assert f"the trainer of attempt 1 (pid {rec['pid']}) is still running" in said, said
    assert "it adopted attempt 1" in said, said
    new = env.status("adopt")["agent_pid"]
    assert new != st["agent_pid"]
    hold.write_text("")

    wait_until(lambda: env.marker("adopt"), 120, what="the adopted run's end")
    failed = json.loads((env.run_dir("adopt") / "FAILED").read_text())
    assert failed["exit_code"] == 7 and failed["attempt"] == 1, failed
    assert env.status("adopt")["trainer"]["exit_code"] == 7


def test_resume_of_a_run_whose_agent_is_alive_says_so_and_starts_nothing(env):
    env.rgt("up", "local", "--run", "alive", "--tick-s", "0.5", "--", "python3", "train.py", check=True,
            extra_env={"STEPS": "1", "HOLD_FILE": str(env.tmp / "never")})
    st = _running(env, "alive")
    p = env.rgt("resume", "alive")
    said = p.stdout + p.stderr
    assert p.returncode == 0, said
    assert f"agent pid {st['agent_pid']} holds agent.lock and is alive" in said and "nothing to do" in said, said
    assert env.status("alive")["agent_pid"] == st["agent_pid"]
    env.rgt("stop", "alive", check=True)


def test_a_second_up_of_a_live_run_says_at_once_that_it_is_alive(env):
    env.rgt("up", "local", "--run", "twice", "--tick-s", "0.5", "--", "python3", "train.py", check=True,
            extra_env={"STEPS": "1", "HOLD_FILE": str(env.tmp / "never")})
    st = _running(env, "twice")
    p = env.rgt("up", "local", "--run", "twice", "--heartbeat-timeout-s", "600", "--", "python3", "train.py",
                timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "already exists" in p.stderr and "is alive" in p.stderr and str(st["agent_pid"]) in p.stderr, p.stderr
    env.rgt("stop", "twice", check=True)


def test_resume_over_a_real_sshd_probes_the_box_and_restarts_a_stopped_run(sshbox, rgt, tmp_path):
    from tests.test_ssh_real import TRAINER

    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(TRAINER)
    up = rgt("up", sshbox.alias, "--run", "sshres", "--tick-s", "0.5", "--code", str(code), "--", "python",
             "train.py")
    assert up.returncode == 0, up.stderr
    alive = rgt("resume", "sshres")
    assert alive.returncode == 0 and "holds agent.lock and is alive" in alive.stdout + alive.stderr, alive.stderr
    assert rgt("stop", "sshres").returncode == 0
    wait_until(lambda: json.loads(rgt("status", "--json", "sshres").stdout or "{}").get("state") == "stopped", 120,
               what="stopped")
    again = rgt("resume", "sshres")
    said = again.stdout + again.stderr
    assert again.returncode == 0 and "no agent holds the run" in said and "the run had ended STOPPED" in said, said
    assert "started agent pid" in said
    rgt("stop", "sshres")
