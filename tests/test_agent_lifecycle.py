import json
import os
import signal
import subprocess

import pytest

from rgt.agent import procs
from rgt.shared.journal import read_journal
from tests.conftest import require_real, scaled, wait_until
from tests.helpers import agent_argv, make_run_dir, python_versions


def _wait_marker(env, run_id, timeout_s=120):
    return wait_until(lambda: env.marker(run_id), timeout_s, what=f"a completion marker for {run_id}")


def test_successful_run_writes_done_with_exit_code_zero(env):
    env.rgt("up", "local", "--run", "ok1", "--tick-s", "0.5", "--", "python3", "train.py", check=True)
    assert env.rgt("wait", "ok1").returncode == 0
    done = json.loads((env.run_dir("ok1") / "DONE").read_text())
    assert done["state"] == "succeeded" and done["exit_code"] == 0
    st = env.status("ok1")
    assert st["state"] == "succeeded" and st["progress"]["step"] == 5 and st["progress"]["source"] == "log"


def test_failing_run_writes_failed_with_exit_code_and_wait_exits_5(env):
    p = env.rgt("up", "local", "--run", "bad1", "--tick-s", "0.5", "--max-restarts", "0", "--", "python3",
                "train.py", extra_env={"EXIT_CODE": "3", "STEPS": "2"})
    assert p.returncode == 0, p.stderr
    assert env.rgt("wait", "bad1").returncode == 5
    failed = json.loads((env.run_dir("bad1") / "FAILED").read_text())
    assert failed["exit_code"] == 3 and failed["failure"]["class"] == "crashed"
    assert "restart budget" in failed["reason"]


def test_stopped_run_writes_stopped_and_the_trainer_group_is_gone(env):
    env.rgt("up", "local", "--run", "stop1", "--tick-s", "0.5", "--", "python3", "train.py", check=True,
            extra_env={"STEPS": "1000"})
    wait_until(lambda: env.status("stop1").get("state") == "running", what="running")
    rec = json.loads((env.run_dir("stop1") / "trainer.json").read_text())
    p = env.rgt("stop", "stop1")
    assert p.returncode == 0, p.stderr
    _wait_marker(env, "stop1")
    assert env.marker("stop1") == "STOPPED"
    assert env.rgt("wait", "stop1").returncode == 5
    assert not procs.is_same_process(rec["pid"], rec["start_time"])
    assert env.status("stop1")["trainer"]["signal"] == "SIGTERM"


def test_agent_killed_9_leaves_trainer_running_and_exit_json_still_appears(env):
    hold = env.tmp / "let-k9-end"
    env.rgt("up", "local", "--run", "k9", "--tick-s", "0.5", "--", "python3", "train.py", check=True,
            extra_env={"STEPS": "2", "STEP_SLEEP_S": "0.05", "EXIT_CODE": "7", "HOLD_FILE": str(hold)})
    wait_until(lambda: env.status("k9").get("state") == "running", what="running")
    agent_pid = env.status("k9")["agent_pid"]
    rec = json.loads((env.run_dir("k9") / "trainer.json").read_text())
    os.kill(agent_pid, signal.SIGKILL)
    assert procs.is_same_process(rec["pid"], rec["start_time"]), "the trainer must survive the agent"
    hold.touch()  # only now may the trainer end: nothing races the kill
    exit_json = env.run_dir("k9") / "exit.json"
    wait_until(exit_json.exists, what="exit.json written by the waiter")
    assert json.loads(exit_json.read_text())["exit_code"] == 7


def test_two_agents_started_at_once_exactly_one_runs(tmp_path, pyz):
    run = make_run_dir(tmp_path, "dup", ["python3", "train.py"], tick_s=0.5)
    argv = [*agent_argv(pyz), "daemon", str(run)]
    a = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    b = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    outs = [a.communicate(timeout=scaled(120))[0], b.communicate(timeout=scaled(120))[0]]
    assert a.returncode == 0 and b.returncode == 0
    assert sum("already supervised" in o for o in outs) == 1, outs
    assert (run / "logs" / "trainer.log").read_text().count("=== rgt attempt") == 1
    assert (run / "DONE").exists()


def test_agent_again_after_done_does_not_rerun_the_trainer(tmp_path, pyz):
    run = make_run_dir(tmp_path, "again", ["python3", "train.py"], tick_s=0.5)
    subprocess.run([*agent_argv(pyz), "daemon", str(run)], check=True, timeout=scaled(120))
    p = subprocess.run([*agent_argv(pyz), "daemon", str(run)], capture_output=True, text=True, timeout=scaled(120))
    assert p.returncode == 0 and "already ended (DONE)" in p.stdout
    assert (run / "logs" / "trainer.log").read_text().count("=== rgt attempt") == 1


def test_agent_survives_the_end_of_the_shell_that_started_it(env):
    env.rgt("up", "local", "--run", "detach", "--tick-s", "0.5", "--", "python3", "train.py", check=True,
            extra_env={"STEPS": "2", "HOLD_FILE": str(env.tmp / "never")})  # the agent lives until the stop
    pid = env.status("detach")["agent_pid"]
    st = procs.proc_stat(pid)
    assert st is not None and st.sid == pid, "the agent leads its own session (setsid)"
    assert st.ppid != os.getpid()
    env.rgt("stop", "detach", check=True)


@pytest.mark.parametrize("version", ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"])
def test_archive_runs_a_short_real_run_isolated_under_each_python(tmp_path, pyz, version):
    exe = python_versions().get(version)
    require_real(exe is not None, f"CPython {version} not installed (pyenv)")
    trainer = ("import os\nprint('step=1 loss=0.5')\n"
               "open(os.path.join(os.environ['RGT_CKPT_DIR'], 'step_1.pt'), 'wb').write(b'not torch')\n"
               "print('step=2 loss=0.25')\n")
    run = make_run_dir(tmp_path, f"py{version.replace('.', '')}", [exe, "train.py"], tick_s=0.3, settle_s=0.2,
                       code={"train.py": trainer})
    p = subprocess.run([exe, "-I", pyz, "daemon", str(run)], capture_output=True, text=True, timeout=scaled(120))
    assert p.returncode == 0, p.stderr
    assert (run / "DONE").exists(), (run / "logs" / "agent.log").read_text()
    st = json.loads((run / "status.json").read_text())
    assert st["progress"]["step"] == 2 and st["state"] == "succeeded"
    kinds = {r["kind"]: r for r in read_journal(str(run / "events.msgpack")).records}
    assert kinds["ckpt_watch"]["mode"] == "inotify", "watchdog's inotify backend runs from the archive"
    assert "ckpt_corrupt" in kinds or "ckpt_unverifiable" in kinds, "the checkpoint went through the pipeline"
    assert st["checkpoint"]["resume_from"] is None, "garbage never becomes a resume target"


def test_archive_is_reproducible_and_named_by_its_hash(tmp_path):
    from rgt.controller import pyz as builder

    a = builder.build_bytes()
    b = builder.build_bytes()
    assert a == b
    path, sha12 = builder.build(str(tmp_path))
    import hashlib

    assert os.path.basename(path) == f"{hashlib.sha256(a).hexdigest()[:12]}.pyz" == f"{sha12}.pyz"


def test_stop_then_resume_runs_a_fresh_attempt_under_the_agent_to_done(env):
    # Attempt 1 holds until stopped (it cannot end first); the resumed agent's trainer has no HOLD_FILE.
    env.rgt("up", "local", "--run", "sr1", "--tick-s", "0.3", "--", "python3", "train.py", check=True,
            extra_env={"STEPS": "5", "STEP_SLEEP_S": "0.2", "HOLD_FILE": str(env.tmp / "never")})
    wait_until(lambda: env.status("sr1").get("state") == "running", what="running")
    env.rgt("stop", "sr1", check=True)
    _wait_marker(env, "sr1")
    assert env.marker("sr1") == "STOPPED"
    p = env.rgt("resume", "sr1")
    assert p.returncode == 0, p.stderr
    st = wait_until(lambda: (env.status("sr1").get("trainer") or {}).get("attempt", 0) >= 2 and env.status("sr1"),
                    what="the resumed attempt")  # running, or already succeeded: a short attempt races the poll
    assert st["trainer"]["attempt"] == 2, "never reuses the number whose exit.json is on disk"
    assert env.rgt("wait", "sr1").returncode == 0
    done = json.loads((env.run_dir("sr1") / "DONE").read_text())
    assert done["attempt"] == 2 and done["exit_code"] == 0


def test_an_agent_restarted_after_success_writes_the_missing_marker_and_never_reruns(tmp_path, pyz):
    run = make_run_dir(tmp_path, "nomark", ["python3", "train.py"], tick_s=0.3)
    subprocess.run([*agent_argv(pyz), "daemon", str(run)], check=True, timeout=scaled(120))
    (run / "DONE").unlink()  # as if the agent died between the end and the marker
    p = subprocess.run([*agent_argv(pyz), "daemon", str(run), "--resume"], capture_output=True, text=True,
                       timeout=scaled(120))
    assert p.returncode == 0, p.stderr
    assert json.loads((run / "DONE").read_text())["state"] == "succeeded"
    assert (run / "logs" / "trainer.log").read_text().count("=== rgt attempt") == 1
