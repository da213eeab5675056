"""The vast.ai onstart bootstrapper: size limit, spec transport, and container restarts that resume (real processes)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import psutil
import pytest

import rgt.agent.demo.train as demo
from tests.conftest import scaled, wait_until
from tests.helpers import AGENT_DRAIN_S

LIMIT = 16 * 1024

pytest_plugins = ["tests.conftest_ssh"]


def _onstart(env, *args, extra_env=None):
    return env.rgt("onstart", "--profile", "vastai", *args, extra_env=extra_env)


def _box_env(env) -> dict:
    """What the container gives the script: its own HOME, and RGT_ROOT standing in for /workspace/.rgt."""
    home = env.tmp / "home"
    home.mkdir(exist_ok=True)
    return dict(env.env, HOME=str(home), RGT_ROOT=str(env.root))


def _start_container(env, script: Path, extra_env=None) -> subprocess.CompletedProcess:
    """One container start: the script in a fresh session, as vast runs /root/onstart.sh."""
    return subprocess.run(["sh", str(script)], env=dict(_box_env(env), **(extra_env or {})), capture_output=True,
                          text=True, timeout=scaled(120), start_new_session=True, cwd=str(env.tmp))


def _pyz_of(script_text: str) -> str:
    return re.search(r'PYZ="\$ROOT/agent/([0-9a-f]{12})\.pyz"', script_text).group(1)


def _script_with_pushed_agent(env, run_id: str, *onstart_args: str) -> Path:
    """Push the agent and code, then write the onstart script; the same archive hash on both sides.

    Others may edit agent/ while this runs, which changes the hash between two builds: try again then.
    """
    for _ in range(3):
        env.rgt("push", "local", "--profile", "vastai", "--run", run_id, "--code", str(env.project), check=True)
        res = _onstart(env, "--run", run_id, *onstart_args)
        assert res.returncode == 0, res.stderr
        if (env.root / "agent" / f"{_pyz_of(res.stdout)}.pyz").exists():
            path = env.tmp / f"onstart-{run_id}.sh"
            path.write_text(res.stdout)
            return path
    pytest.fail("the agent archive kept changing between push and onstart")


def test_an_onstart_script_over_16k_fails_with_exit_2_and_its_size(env):
    noise = secrets.token_urlsafe(30000)  # random: gzip cannot bring it under the limit
    res = _onstart(env, "--run", "big1", "--", "python", "train.py", noise)
    assert res.returncode == 2, res.stderr
    assert res.stdout == ""
    m = re.search(r"the onstart script is (\d+) bytes", res.stderr)
    assert m and int(m.group(1)) > LIMIT, res.stderr
    assert str(LIMIT) in res.stderr


def test_the_script_is_posix_sh_under_the_limit_and_carries_names_not_secret_values(env):
    token = "rgt-onstart-" + secrets.token_hex(16)
    res = _onstart(env, "--run", "plain1", "--secret", "HF_TOKEN", "--", "python", "train.py",
                   extra_env={"HF_TOKEN": token})
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert len(text.encode()) <= LIMIT
    assert token not in text and token not in res.stderr
    assert '"HF_TOKEN"' in text  # the name travels, so the box can say when the value is missing
    for shell in ("sh", "dash", "bash"):
        if shutil.which(shell):
            chk = subprocess.run([shell, "-n"], input=text, capture_output=True, text=True, check=False)
            assert chk.returncode == 0, (shell, chk.stderr)


def test_a_long_spec_travels_gzipped_and_is_written_once_on_the_first_start(env):
    long_arg = "--note=" + "gradient " * 2500  # about 22 KB plain, a few hundred bytes gzipped
    res = _onstart(env, "--run", "gz1", "--", "python", "train.py", long_arg)
    assert res.returncode == 0, res.stderr
    assert "gzip+base64" in res.stderr
    script = env.tmp / "gz1.sh"
    script.write_text(res.stdout)
    assert len(res.stdout.encode()) <= LIMIT

    first = _start_container(env, script)
    assert first.returncode == 0, first.stderr
    assert "wrote" in first.stdout and "is not here" in first.stdout and "rgt push" in first.stdout
    spec_path = env.run_dir("gz1") / "spec.json"
    spec = json.loads(spec_path.read_text())
    assert spec["command"] == ["python", "train.py", long_arg]
    assert spec["created_at"] > 0 and spec["python"]
    assert (env.run_dir("gz1") / "code").is_dir()
    assert oct(env.run_dir("gz1").stat().st_mode & 0o777) == "0o700"

    before = spec_path.read_bytes()
    again = _start_container(env, script)
    assert again.returncode == 0 and "wrote" not in again.stdout
    assert spec_path.read_bytes() == before  # the spec is immutable once on the box


def _run_tree(env, run_id: str) -> List[psutil.Process]:
    """The agent, the waiter and the trainer from status/trainer.json, and all their descendants."""
    roots = [env.status(run_id).get("agent_pid")]
    try:
        rec = json.loads((env.run_dir(run_id) / "trainer.json").read_text())
        roots += [rec.get("waiter_pid"), rec.get("pid")]
    except (OSError, ValueError):
        pass
    found = {}
    for pid in filter(None, roots):
        try:
            p = psutil.Process(pid)
            found[p.pid] = p
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def _kill_tree(procs: List[psutil.Process]) -> None:
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)  # psutil checks the pid's start time: no reused pid is hit
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive


def _trainer_env(env, run_id: str, attempt: int) -> dict:
    rec = json.loads((env.run_dir(run_id) / "trainer.json").read_text())
    if rec.get("attempt") != attempt:
        return {}
    try:
        raw = Path(f"/proc/{rec['pid']}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


# The demo trainer, holding after step HOLD_AFTER_STEP (the first container's trainer is killed there,
# however slowly its checkpoint is verified, never after the run's end); without the variable it runs through.
HOLDING_TRAINER = """\
import os, sys, time
import demo_train
hold = int(os.environ.get("HOLD_AFTER_STEP") or 0)
report = demo_train.ckpt.report
def held(step, *args, **kwargs):
    report(step, *args, **kwargs)
    while hold and step > hold:
        time.sleep(0.5)
demo_train.ckpt.report = held
sys.exit(demo_train.main())
"""
HOLD = 100


def test_container_restart_resumes_from_the_newest_verified_checkpoint_and_a_done_run_is_left_alone(env):
    shutil.copy(demo.__file__, env.project / "demo_train.py")
    (env.project / "train.py").write_text(HOLDING_TRAINER)
    run_id = "restart1"
    script = _script_with_pushed_agent(
        env, run_id, "--python", sys.executable, "--tick-s", "0.5", "--start-grace-s", "0",
        "--", sys.executable, "train.py", "--steps", "300", "--step-sleep-s", "0.05", "--save-every", "50")

    first = _start_container(env, script, extra_env={"HOLD_AFTER_STEP": str(HOLD)})
    assert first.returncode == 0 and "agent launched" in first.stdout, first.stdout + first.stderr

    def verified_or_ended():
        st = env.status(run_id)
        ck = st.get("checkpoint") or {}
        return env.marker(run_id) or (st.get("state") == "running" and ck.get("resume_from")
                                      and (ck.get("last_step") or 0) >= HOLD)

    wait_until(verified_or_ended, timeout_s=180,
               what="a verified checkpoint in status.json (checkpoint.resume_from): is the checkpoint pipeline "
                    "wired into the daemon?")
    if env.marker(run_id):
        saved = sorted(os.listdir(env.run_dir(run_id) / "ckpt"))
        ck = env.status(run_id).get("checkpoint") or {}
        if not ck.get("resume_from"):
            pytest.fail(f"the run ended ({env.marker(run_id)}) and status.json never showed a verified checkpoint "
                        f"although the trainer saved {len(saved)} ({saved[-1:]}): the checkpoint pipeline is not "
                        "wired into the daemon, so no restart can get RGT_RESUME_FROM")
        pytest.fail(f"the run ended ({env.marker(run_id)}) before it could be killed mid-run")
    seen_step = env.status(run_id)["checkpoint"]["last_step"]

    _kill_tree(_run_tree(env, run_id))  # the container dies: agent, waiter, trainer, verifier
    assert not env.marker(run_id)

    second = _start_container(env, script)
    assert second.returncode == 0 and "agent launched" in second.stdout, second.stdout + second.stderr
    resumed_env = wait_until(lambda: _trainer_env(env, run_id, 2), timeout_s=180, what="attempt 2's trainer")
    resume_from = resumed_env.get("RGT_RESUME_FROM")
    assert resume_from, "attempt 2 started without RGT_RESUME_FROM: the daemon does not pass the verified checkpoint"
    step = int(re.search(r"step_0*(\d+)\.pt$", resume_from).group(1))
    assert step >= seen_step

    wait_until(lambda: env.marker(run_id), timeout_s=AGENT_DRAIN_S + 180, what="the resumed run to finish")
    assert env.marker(run_id) == "DONE"
    log = (env.run_dir(run_id) / "logs" / "trainer.log").read_text()
    second_attempt = log.split("=== rgt attempt 2 ===", 1)[1]
    assert f"resumed from step={step} " in second_attempt
    steps = [int(x) for x in re.findall(r"^step=(\d+) ", second_attempt, re.M)]
    assert steps[0] == step + 1 and steps[-1] == 300  # the step continues; it does not start at 1

    status_before = (env.run_dir(run_id) / "status.json").read_bytes()
    journal_before = (env.run_dir(run_id) / "events.msgpack").read_bytes()
    third = _start_container(env, script)
    assert third.returncode == 0
    assert "already ended (DONE)" in third.stdout and "agent launched" not in third.stdout
    assert (env.run_dir(run_id) / "status.json").read_bytes() == status_before
    assert (env.run_dir(run_id) / "events.msgpack").read_bytes() == journal_before


def test_push_start_launches_a_run_whose_first_start_found_no_agent(env):
    run_id = "late1"
    res = _onstart(env, "--run", run_id, "--python", sys.executable, "--tick-s", "0.5", "--",
                   sys.executable, "train.py")
    script = env.tmp / "late1.sh"
    script.write_text(res.stdout)
    first = _start_container(env, script)  # the instance booted before `rgt push`
    assert "is not here" in first.stdout
    pushed = env.rgt("push", "local", "--profile", "vastai", "--run", run_id, "--code", str(env.project), "--start",
                     extra_env={"STEPS": "2"})
    assert pushed.returncode == 0, pushed.stderr
    wait_until(lambda: env.marker(run_id), timeout_s=180, what="the pushed run to finish")
    assert env.marker(run_id) == "DONE"
    assert (env.run_dir(run_id) / "code" / "train.py").exists()
    runs = json.loads(env.rgt("runs", "--json", check=True).stdout)
    assert any(r["run_id"] == run_id and r["profile"] == "vastai" for r in runs)


def test_push_over_ssh_puts_the_agent_and_code_under_the_persistent_root_and_registers_the_run(rgt, sshbox, tmp_path):
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text("print('hi')\n")
    root = f"{sshbox.home}/persist/.rgt"  # stands in for /workspace/.rgt, which the test login cannot make
    res = rgt("push", sshbox.alias, "--profile", "vastai", "--root", root, "--run", "ssh1", "--code", str(code),
              "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["root"] == root and out["pyz"].startswith(f"{root}/agent/") and Path(out["pyz"]).exists()
    assert Path(root, "runs", "ssh1", "code", "train.py").exists()
    assert oct(Path(root, "runs", "ssh1").stat().st_mode & 0o777) == "0o700"
    rec = json.loads(Path(rgt.state, "runs", "ssh1.json").read_text())
    assert (rec["host"], rec["root"], rec["profile"]) == (sshbox.alias, root, "vastai")
    again = rgt("push", sshbox.alias, "--run", "ssh1")  # no --root: the registered one is used
    assert again.returncode == 0 and f"{root}/agent/" in again.stderr


def test_push_code_onto_a_run_that_already_ran_is_refused_and_its_outputs_stay(env):
    env.rgt("up", "local", "--run", "pushed", "--tick-s", "0.3", "--", "python3", "train.py", check=True,
            extra_env={"STEPS": "1"})
    assert env.rgt("wait", "pushed").returncode == 0
    output = env.run_dir("pushed") / "code" / "results.json"
    output.write_text("{}")
    p = env.rgt("push", "local", "--run", "pushed", "--code", str(env.project))
    assert p.returncode == 2 and "--replace-code" in p.stderr
    assert output.exists()
