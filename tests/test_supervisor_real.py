"""The supervisor against real processes, a real cgroup OOM kill, real full filesystems, real pauses."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rgt.shared.journal import read_journal
from tests.conftest import require_real, scaled, wait_until
from tests.helpers import agent_argv, make_run_dir

ALLOC = """\
import os, time
print("step=1 loss=1.0", flush=True)
time.sleep(2.5)
b = bytearray(300 * 1024 * 1024)
print("never", flush=True)
"""
CUDA_OOM = """\
import sys
print("step=1 loss=2.0"); print("step=2 loss=1.9", flush=True)
print("Traceback (most recent call last):", file=sys.stderr)
print('  File "train.py", line 80, in <module>', file=sys.stderr)
print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total)",
      file=sys.stderr)
sys.exit(1)
"""
FILL = """\
import os, sys
d = os.environ["RGT_CKPT_DIR"]
mode = sys.argv[1]
print("step=1 loss=1.0", flush=True)
if mode == "bytes":
    with open(os.path.join(d, "big.bin"), "wb") as f:
        while True:
            f.write(b"x" * 65536); f.flush(); os.fsync(f.fileno())
else:
    i = 0
    while True:
        open(os.path.join(d, "shard_%06d.tmp" % i), "wb").close(); i += 1
"""
SLOW = """\
import os, sys, time
n = int(os.environ.get("STEPS", "100"))
if os.environ.get("RGT_ATTEMPT") != "1":
    n = 3
for i in range(1, n + 1):
    print(f"step={i} loss={1.0 / i:.3f}", flush=True)
    time.sleep(float(os.environ.get("STEP_SLEEP_S", "0.2")))
"""
STALL = """\
import time
print("step=1 loss=1.0", flush=True)
time.sleep(1000)
"""


def _daemon(pyz, run, background=False):
    argv = [*agent_argv(pyz), "daemon", str(run)]
    if background:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(argv, capture_output=True, text=True, timeout=scaled(120))


def _marker(run: Path):
    for name in ("DONE", "FAILED", "STOPPED"):
        if (run / name).exists():
            return name, json.loads((run / name).read_text())
    return None


def _status(run: Path):
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _failures(run: Path):
    return [r["class"] for r in read_journal(str(run / "events.msgpack")).records if r["kind"] == "failure"]


def _attempts(run: Path):
    return (run / "logs" / "trainer.log").read_text().count("=== rgt attempt")


@pytest.fixture
def memory_cgroup():
    lines = [ln.split(":", 2) for ln in Path("/proc/self/cgroup").read_text().splitlines()]
    rel = next((p for _, ctrl, p in lines if "memory" in ctrl.split(",")), None)
    base = Path("/sys/fs/cgroup/memory") / (rel or "/").lstrip("/")
    require_real(rel is not None and (base / "memory.limit_in_bytes").exists(), "cgroup v1 memory controller")
    cg = base / f"rgt-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        cg.mkdir()
    except OSError as e:
        require_real(False, f"cannot create a memory cgroup: {e}")
    (cg / "memory.limit_in_bytes").write_text(str(64 * 1024 * 1024))
    yield cg
    for _ in range(50):
        try:
            cg.rmdir()
            break
        except OSError:
            time.sleep(0.1)


def test_cgroup_oom_kill_is_oom_host_with_the_counter_as_evidence_and_not_retried(tmp_path, pyz, memory_cgroup):
    run = make_run_dir(tmp_path, "oom", ["sh", "-c", 'echo $$ > "$CG/cgroup.procs" && exec python3 alloc.py'],
                       code={"alloc.py": ALLOC}, tick_s=0.5, max_restarts=3, env={"CG": str(memory_cgroup)})
    _daemon(pyz, run)
    name, marker = _marker(run)
    assert name == "FAILED"
    assert marker["failure"]["class"] == "oom_host", marker
    assert "oom_kill" in marker["failure"]["evidence"] and "67108864" in marker["failure"]["evidence"]
    assert _attempts(run) == 1
    assert int((memory_cgroup / "memory.oom_control").read_text().split("oom_kill ")[1].split()[0]) >= 1


def test_cuda_oom_traceback_is_oom_cuda_with_its_step_and_not_retried(tmp_path, pyz):
    run = make_run_dir(tmp_path, "cudaoom", ["python3", "train.py"], code={"train.py": CUDA_OOM}, tick_s=0.3)
    _daemon(pyz, run)
    name, marker = _marker(run)
    assert name == "FAILED" and marker["failure"]["class"] == "oom_cuda"
    assert "step 2" in marker["failure"]["evidence"]
    assert _attempts(run) == 1


def test_keyerror_in_the_first_second_is_config_error_and_never_retried(tmp_path, pyz):
    run = make_run_dir(tmp_path, "cfg", ["python3", "train.py"], tick_s=0.3, max_restarts=5,
                       code={"train.py": "cfg = {}\nprint(cfg['learning_rate'])\n"})
    _daemon(pyz, run)
    name, marker = _marker(run)
    assert name == "FAILED" and marker["failure"]["class"] == "config_error"
    assert "KeyError" in marker["failure"]["evidence"]
    assert _attempts(run) == 1


@pytest.mark.parametrize(("mode", "opts", "expected"), [
    ("bytes", "size=2m,nr_inodes=1000", "disk_full"),
    ("inodes", "size=64m,nr_inodes=64", "inode_full"),
])
def test_full_tmpfs_is_told_apart_bytes_from_inodes(tmp_path, pyz, tmpfs, mode, opts, expected):
    fs = tmpfs("fs", opts)
    run = make_run_dir(tmp_path, f"full-{mode}", ["python3", "fill.py", mode], code={"fill.py": FILL},
                       tick_s=0.3, ckpt_dir=str(fs), backoff_s=0.1, max_restarts=3, min_free_bytes=0)
    _daemon(pyz, run)
    name, marker = _marker(run)
    assert name == "FAILED"
    assert marker["failure"]["class"] == expected, marker
    assert _failures(run) == [expected, expected], "retried exactly once"


def test_kill_9_mid_run_is_crashed_resumed_and_then_succeeds(tmp_path, pyz):
    run = make_run_dir(tmp_path, "k9t", ["python3", "slow.py"], code={"slow.py": SLOW}, tick_s=0.3,
                       backoff_s=0.1)
    agent = _daemon(pyz, run, background=True)
    wait_until(lambda: _status(run).get("progress", {}).get("step"), what="first step")
    rec = json.loads((run / "trainer.json").read_text())
    os.kill(rec["pid"], signal.SIGKILL)
    agent.wait(timeout=scaled(60))
    name, marker = _marker(run)
    assert name == "DONE", marker
    assert _failures(run) == ["crashed"]
    assert _attempts(run) == 2 and marker["attempt"] == 2 and marker["restarts"] == 1


def test_a_trainer_that_stops_printing_progress_is_stalled_killed_by_group_and_resumed(tmp_path, pyz):
    run = make_run_dir(tmp_path, "stall", ["sh", "-c", "python3 stall.py & python3 stall.py; wait"],
                       code={"stall.py": STALL}, tick_s=0.3, stall_after_s=1.5, stop_timeout_s=2.0,
                       backoff_s=0.1, max_restarts=1)
    _daemon(pyz, run)
    name, marker = _marker(run)
    assert name == "FAILED" and marker["failure"]["class"] == "stalled"
    assert _failures(run) == ["stalled", "stalled"]
    kinds = [r["kind"] for r in read_journal(str(run / "events.msgpack")).records]
    assert kinds.count("stall") == 2
    out = subprocess.run(["pgrep", "-f", str(run / "code")], capture_output=True, text=True)
    assert out.stdout.strip() == "", "every process of the group is gone, the background child too"


def test_sigstop_of_the_trainer_shows_as_a_pause_not_a_stall(tmp_path, pyz):
    run = make_run_dir(tmp_path, "sigstop", ["python3", "slow.py"], code={"slow.py": SLOW}, tick_s=0.3,
                       stall_after_s=2.0, env={"STEPS": "400", "STEP_SLEEP_S": "0.05"})
    agent = _daemon(pyz, run, background=True)
    wait_until(lambda: _status(run).get("state") == "running", what="running")
    pid = json.loads((run / "trainer.json").read_text())["pid"]
    stopped_at = time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: any(s["name"] == "pause" for s in _status(run).get("sentinels", [])),
                   what="a pause sentinel")
        # A pause longer than stall_after_s must not count as a stall: wait until the agent itself has
        # ticked that long into the pause (a sleep proves nothing when the agent is starved of CPU).
        wait_until(lambda: (_status(run).get("updated_at") or 0) > stopped_at + 2 * 2.0,
                   what="the agent to tick twice stall_after_s into the pause")
        assert _status(run)["state"] == "running" and _failures(run) == []
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: not any(s["name"] == "pause" for s in _status(run).get("sentinels", [])),
               what="the pause to clear")
    agent.wait(timeout=scaled(60))
    assert _marker(run)[0] == "DONE" and _failures(run) == []


def test_cgroup_freezer_on_the_trainer_shows_as_a_pause(tmp_path, pyz):
    base = Path("/sys/fs/cgroup/freezer")
    require_real((base / "freezer.state").exists() or base.is_dir(), "cgroup v1 freezer")
    cg = base / f"rgt-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        cg.mkdir()
    except OSError as e:
        require_real(False, f"cannot create a freezer cgroup: {e}")
    run = make_run_dir(tmp_path, "frozen", ["python3", "slow.py"], code={"slow.py": SLOW}, tick_s=0.3,
                       env={"STEPS": "400", "STEP_SLEEP_S": "0.05"})
    agent = _daemon(pyz, run, background=True)
    try:
        wait_until(lambda: _status(run).get("state") == "running", what="running")
        pid = json.loads((run / "trainer.json").read_text())["pid"]
        (cg / "cgroup.procs").write_text(str(pid))
        (cg / "freezer.state").write_text("FROZEN")
        wait_until(lambda: any(s["name"] == "pause" for s in _status(run).get("sentinels", [])),
                   what="a pause sentinel")
    finally:
        (cg / "freezer.state").write_text("THAWED")
        agent.wait(timeout=scaled(60))
        for p in (cg / "cgroup.procs").read_text().split():
            Path("/sys/fs/cgroup/freezer/cgroup.procs").write_text(p)
        cg.rmdir()
    assert _marker(run)[0] == "DONE"


def test_a_paused_agent_notices_the_gap_between_ticks(tmp_path, pyz):
    run = make_run_dir(tmp_path, "agentpause", ["python3", "slow.py"], code={"slow.py": SLOW}, tick_s=0.3,
                       env={"STEPS": "60", "STEP_SLEEP_S": "0.05"})
    agent = _daemon(pyz, run, background=True)
    wait_until(lambda: _status(run).get("state") == "running", what="running")
    os.kill(agent.pid, signal.SIGSTOP)
    time.sleep(2.0)  # the stimulus itself: the agent is frozen this long (at least; load only adds to it)
    os.kill(agent.pid, signal.SIGCONT)
    agent.wait(timeout=scaled(60))
    events = [r for r in read_journal(str(run / "events.msgpack")).records if r["kind"] == "preempted"]
    assert events and events[0]["gap_s"] >= 1.5


def test_agent_killed_9_is_adopted_on_restart_without_a_second_trainer(tmp_path, pyz):
    hold = tmp_path / "let-it-end"  # the trainer ends only once the second agent has adopted it
    code = SLOW + "while not os.path.exists(os.environ['HOLD_FILE']):\n    time.sleep(0.05)\nraise SystemExit(7)\n"
    run = make_run_dir(tmp_path, "adopt", ["python3", "slow.py"], code={"slow.py": code}, tick_s=0.3,
                       max_restarts=0, env={"STEPS": "3", "STEP_SLEEP_S": "0.05", "HOLD_FILE": str(hold)})
    agent = _daemon(pyz, run, background=True)
    wait_until(lambda: _status(run).get("state") == "running", what="running")
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait()
    second = _daemon(pyz, run, background=True)
    wait_until(lambda: any("adopting attempt 1" in r.get("reason", "")
                           for r in read_journal(str(run / "events.msgpack")).records), what="the adoption")
    hold.touch()
    assert second.wait(timeout=scaled(120)) == 0
    name, marker = _marker(run)
    assert name == "FAILED" and marker["exit_code"] == 7
    assert _attempts(run) == 1, "the trainer was adopted, not started twice"
    reasons = [r.get("reason", "") for r in read_journal(str(run / "events.msgpack")).records]
    assert any("adopting attempt 1" in r for r in reasons)


def test_a_clean_exit_counts_even_when_a_background_child_keeps_stdout_open(tmp_path, pyz):
    run = make_run_dir(tmp_path, "bgchild", ["sh", "-c", "sleep 30 & echo step=1 loss=1.0; exit 0"], tick_s=0.3,
                       stall_after_s=5.0)
    _daemon(pyz, run)
    name, marker = _marker(run)
    assert name == "DONE", marker
    assert marker["exit_code"] == 0 and _failures(run) == [], "not stalled by a pipe the trainer no longer owns"
