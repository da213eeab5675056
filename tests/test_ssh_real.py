"""rgt over a real sshd on 127.0.0.1: up, status, watch, logs, stop, attach, outages and changed host keys."""

import json
import os
import pwd
import re
import signal
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from rgt.controller.transport.ssh import SSHTransport
from tests.conftest import scaled, wait_until
from tests.sshbox import RGT

# The sshd fixtures (sshbox, rgt, rgt_state); harmless if tests/conftest.py lists it too.
pytest_plugins = ["tests.conftest_ssh"]

TRAINER = """\
import time
for i in range(1, 100000):
    print(f"step={i} loss={1.0 / i:.4f}", flush=True)
    time.sleep(0.2)
"""


@pytest.fixture
def code_dir():
    path = tempfile.mkdtemp(prefix="rgt-code-")
    Path(path, "train.py").write_text(TRAINER)
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


def _up(rgt, sshbox, code_dir, run_id):
    res = rgt("up", sshbox.alias, "--run", run_id, "--tick-s", "0.5", "--code", code_dir,
              "--", "python", "train.py")
    assert res.returncode == 0, res.stderr
    return res


def _status(rgt, run_id):
    res = rgt("status", "--json", run_id)
    return res.returncode, (json.loads(res.stdout) if res.stdout.strip() else None), res.stderr


def _step(rgt, run_id):
    rc, data, _ = _status(rgt, run_id)
    if rc != 0 or data is None or data["state"] != "running":
        return None
    return data["progress"]["step"]


def _wait_step_above(rgt, run_id, floor):
    return wait_until(lambda: (_step(rgt, run_id) or 0) > floor and _step(rgt, run_id),
                      timeout_s=120, what=f"{run_id} running past step {floor}")


def _transport(sshbox, rgt) -> SSHTransport:
    return SSHTransport(sshbox.alias, ssh_config=str(sshbox.ssh_config), state=Path(rgt.state))


def test_up_returns_after_first_heartbeat_over_one_connection(rgt, sshbox, code_dir):
    before = sshbox.accepted()
    _up(rgt, sshbox, code_dir, "up1")
    # code sync, the agent archive and every command went over the one ControlMaster connection
    assert sshbox.accepted() == before + 1
    rc, data, _ = _status(rgt, "up1")
    assert rc == 0
    assert data["schema_version"] == 1 and data["run_id"] == "up1"
    assert data["controller"]["view"] in ("starting", "running")
    first = _wait_step_above(rgt, "up1", 0)
    _wait_step_above(rgt, "up1", first)
    assert Path(sshbox.home, ".rgt", "runs", "up1", "code", "train.py").exists()
    if sshbox.user is not None:  # the box's login is a plain user, as on most rentals
        assert Path(sshbox.home, ".rgt", "runs", "up1").stat().st_uid == pwd.getpwnam(sshbox.user).pw_uid


def test_frozen_agent_reads_as_not_responding(rgt, sshbox, code_dir):
    _up(rgt, sshbox, code_dir, "frozen1")
    _wait_step_above(rgt, "frozen1", 0)
    agent = psutil.Process(_status(rgt, "frozen1")[1]["agent_pid"])
    assert agent in sshbox.box_processes()  # a pid we track, not a guess
    agent.suspend()
    try:
        wait_until(lambda: _status(rgt, "frozen1")[1]["controller"]["view"] == "stale", timeout_s=120,
                   what="the status to go stale")
        res = rgt("status", "frozen1")
        assert res.returncode == 0 and "agent not responding" in res.stdout
    finally:
        agent.resume()


def test_watch_exits_3_when_the_transport_drops(rgt, sshbox, code_dir):
    _up(rgt, sshbox, code_dir, "wdrop1")
    watcher = subprocess.Popen([RGT, "status", "--watch", "--json", "wdrop1"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=sshbox.env(rgt.state), text=True)
    assert json.loads(watcher.stdout.readline())["run_id"] == "wdrop1"
    sshbox.stop()
    last = None
    for line in watcher.stdout:
        last = json.loads(line)
    assert watcher.wait(timeout=scaled(60)) == 3
    assert last["controller"]["view"] == "unreachable" and last["state"] in ("starting", "running")
    assert "Traceback" not in watcher.stderr.read()


def test_killing_master_and_controller_leaves_the_run_alone(rgt, sshbox, code_dir):
    _up(rgt, sshbox, code_dir, "cm1")
    watcher = subprocess.Popen([RGT, "status", "--watch", "--json", "cm1"], stdout=subprocess.PIPE,
                               env=sshbox.env(rgt.state), text=True)
    assert json.loads(watcher.stdout.readline())["run_id"] == "cm1"
    t = _transport(sshbox, rgt)
    check = t.control("check").stderr.decode()
    master = int(re.search(r"pid=(\d+)", check).group(1))
    os.kill(master, signal.SIGKILL)
    watcher.send_signal(signal.SIGKILL)
    watcher.wait()
    step = _wait_step_above(rgt, "cm1", 0)
    _wait_step_above(rgt, "cm1", step)
    assert t.control("exit").returncode == 0  # the graceful way, on the master the last status made
    _wait_step_above(rgt, "cm1", step + 1)


def test_sshd_down_is_transport_unavailable_and_the_run_survives(rgt, sshbox, code_dir):
    _up(rgt, sshbox, code_dir, "down1")
    step = _wait_step_above(rgt, "down1", 0)
    sshbox.stop()
    res = rgt("status", "down1")
    assert res.returncode == 3
    assert "transport unavailable" in res.stdout + res.stderr
    assert "last known state: running" in res.stdout
    assert "dead" not in (res.stdout + res.stderr).lower()
    rc, data, _ = _status(rgt, "down1")
    assert rc == 3 and data["controller"]["view"] == "unreachable"
    sshbox.start()
    _wait_step_above(rgt, "down1", step)


def test_logs_and_stop_over_ssh(rgt, sshbox, code_dir):
    _up(rgt, sshbox, code_dir, "logs1")
    _wait_step_above(rgt, "logs1", 6)
    res = rgt("logs", "-n", "5", "logs1")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert len(lines) == 5 and all(line.startswith("step=") for line in lines)
    follow = subprocess.Popen([RGT, "logs", "-f", "-n", "1", "logs1"], stdout=subprocess.PIPE,
                              env=sshbox.env(rgt.state), text=True)
    seen = [follow.stdout.readline(), follow.stdout.readline()]
    follow.terminate()
    follow.wait()
    assert all(s.startswith("step=") for s in seen) and seen[0] != seen[1]
    res = rgt("stop", "logs1")
    assert res.returncode == 0, res.stderr
    # The stop waits a while for the marker; a busy box may take longer: wait for it, then read status.
    wait_until(lambda: Path(sshbox.home, ".rgt", "runs", "logs1", "STOPPED").exists(), what="STOPPED")
    rc, data, _ = _status(rgt, "logs1")
    assert rc == 0 and data["state"] == "stopped"


def test_watch_keeps_one_session_and_ends_with_the_run(rgt, sshbox, code_dir):
    _up(rgt, sshbox, code_dir, "watch1")
    connections = sshbox.accepted()
    watcher = subprocess.Popen([RGT, "status", "--watch", "--json", "watch1"], stdout=subprocess.PIPE,
                               env=sshbox.env(rgt.state), text=True)
    seqs = [json.loads(watcher.stdout.readline())["seq"] for _ in range(4)]
    assert seqs == sorted(set(seqs))
    assert rgt("stop", "watch1").returncode == 0
    last = None
    for line in watcher.stdout:
        last = json.loads(line)
    assert watcher.wait(timeout=scaled(60)) == 0
    assert last["state"] == "stopped"
    assert sshbox.accepted() == connections


def test_changed_host_key_refuses_and_says_how_to_forget_it(rgt, sshbox, code_dir):
    _up(rgt, sshbox, code_dir, "key1")
    sshbox.stop()  # also ends the master's connection, as a destroyed rental would
    sshbox.new_host_key()
    sshbox.start()
    before = sshbox.accepted()
    res = rgt("status", "key1")
    assert res.returncode == 3
    out = res.stdout + res.stderr
    assert "CHANGED" in out and "re-created" in out and "Traceback" not in out
    assert sshbox.accepted() == before  # no login happened, nothing ran
    forget = re.search(r"`(ssh-keygen -R [^`]+)`", out).group(1)
    assert rgt.state in forget
    subprocess.run(forget, shell=True, check=True, capture_output=True)  # the advice, as a person would paste it
    rc, data, _ = _status(rgt, "key1")
    assert rc == 0 and data["state"] == "running"


def test_attach_registers_a_run_started_elsewhere(rgt, sshbox, code_dir):
    _up(rgt, sshbox, code_dir, "att1")
    other = tempfile.mkdtemp(prefix="rgt-st-", dir="/tmp")
    try:
        env = sshbox.env(other)
        res = subprocess.run([RGT, "attach", sshbox.alias, "att1"], env=env, capture_output=True, text=True,
                             check=False)
        assert res.returncode == 0, res.stderr
        res = subprocess.run([RGT, "status", "--json", "att1"], env=env, capture_output=True, text=True,
                             check=False)
        assert res.returncode == 0 and json.loads(res.stdout)["run_id"] == "att1"
        rec = json.loads(Path(other, "runs", "att1.json").read_text())
        assert rec["host"] == sshbox.alias and rec["root"] == str(Path(sshbox.home, ".rgt"))
        res = subprocess.run([RGT, "attach", sshbox.alias, "nosuchrun"], env=env, capture_output=True,
                             text=True, check=False)
        assert res.returncode == 2 and "no run nosuchrun" in res.stderr
    finally:
        subprocess.run(["rm", "-rf", other], check=False)


@pytest.mark.parametrize(("args", "code"), [
    (["status", "nosuchhost.invalid:run1"], 3),
    (["up", "nosuchhost.invalid", "--", "python", "train.py"], 3),
    (["attach", "nosuchhost.invalid", "run1"], 3),
    (["up", "--", "-oProxyCommand=touch /tmp/rgt-pwned", "python", "train.py"], 2),
    (["attach", "--", "-oProxyCommand=touch /tmp/rgt-pwned", "run1"], 2),
    (["status", "Bad_Run!"], 2),
    (["attach", "somehost", "BAD RUN"], 2),
])
def test_bad_input_is_one_line_and_the_right_exit_code(rgt, code_dir, args, code):
    res = rgt(*args, cwd=code_dir)
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    # `up` may print the profile's briefing first; the error itself is one line, the last one
    errors = [line for line in res.stderr.splitlines() if line.startswith(("rgt: ", "Error: "))]
    assert len(errors) == 1 and res.stderr.strip().splitlines()[-1] == errors[0], res.stderr
    assert not os.path.exists("/tmp/rgt-pwned")


def test_pull_verify_down_over_ssh(rgt, sshbox, code_dir):
    Path(code_dir, "train.py").write_text(
        "import time\nfor i in range(1, 6):\n    print(f'step={i}', flush=True)\n    time.sleep(0.2)\n"
        "open('out.txt', 'w').write('result 42\\n')\n")
    res = rgt("up", sshbox.alias, "--run", "pull1", "--tick-s", "0.5", "--code", code_dir,
              "--artifacts", "out.txt", "--", "python", "train.py")
    assert res.returncode == 0, res.stderr
    assert rgt("wait", "pull1").returncode == 0
    assert rgt("down", "pull1", "--confirm", "pull1").returncode == 4  # nothing pulled yet
    dest = str(Path(code_dir, "pulled"))
    res = rgt("pull", "pull1", "--dest", dest)
    assert res.returncode == 0, res.stderr
    assert Path(dest, "code", "out.txt").read_text() == "result 42\n"
    assert Path(dest, "PULL_VERIFIED.json").exists()
    assert rgt("verify", dest).returncode == 0
    res = rgt("down", "pull1", "--confirm", "pull1")
    assert res.returncode == 0, res.stderr
