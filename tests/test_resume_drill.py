"""Resume drills with the demo trainer: kill -9 or SIGTERM at about half, resume, and get bitwise-equal weights."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import rgt.agent.demo.train as demo
from rgt.agent.ckpt.pipeline import CheckpointPipeline
from rgt.shared.atomic import read_json
from rgt.shared.journal import Journal
from rgt.shared.paths import RunPaths
from rgt.shared.spec import RunSpec
from tests.conftest import scaled, wait_until

STEPS = 60
PREFIX = [sys.executable, "-m", "rgt.agent.ckpt.verify"]


def plain_env() -> dict:
    """The environment without any RGT_* setting (the test-session marker stays, for reaping)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RGT_") or k == "RGT_TEST_SESSION"}


def agent_env(root) -> dict:
    return dict(plain_env(), RGT_RUN_ID="r1", RGT_CKPT_DIR=str(root / "ckpt"), RGT_STATUS_DIR=str(root / "helper"))


def weights(path) -> dict:
    return torch.load(path, weights_only=True)


def bitwise_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def start(cwd, env, *args) -> subprocess.Popen:
    cmd = [sys.executable, demo.__file__, "--steps", str(STEPS), *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until_step(proc: subprocess.Popen, step: int) -> None:
    for line in proc.stdout:
        if line.startswith("step=") and int(line.split()[0][5:]) >= step:
            return
    pytest.fail(f"the trainer ended before step {step} (rc={proc.wait()})")


def start_at_half(tmp_path, save_every: str):
    """A run dir laid out as the agent does, and a trainer under way that has just printed half its steps."""
    root = tmp_path / "runs" / "r1"
    code = root / "code"
    code.mkdir(parents=True)
    proc = start(code, agent_env(root), "--step-sleep-s", "0.05", "--save-every", save_every)
    read_until_step(proc, STEPS // 2)
    return root, code, proc


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One run straight through, by hand: no RGT_* variables, so the helper saves into ./ckpt."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    p = subprocess.run([sys.executable, demo.__file__, "--steps", str(STEPS), "--step-sleep-s", "0",
                        "--save-every", "10"], cwd=cwd, env=plain_env(), capture_output=True, text=True,
                       timeout=scaled(180))
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(os.listdir(cwd / "ckpt"))[-1] == f"step_{STEPS:09d}.pt"
    return weights(cwd / "final.pt")


@pytest.mark.slow
def test_kill_9_at_half_and_resume_from_the_pipeline_target_gives_bitwise_equal_weights(uninterrupted, tmp_path):
    root, code, proc = start_at_half(tmp_path, "10")
    proc.kill()
    assert proc.wait() == -signal.SIGKILL

    spec = RunSpec(run_id="r1", command=["python", "train.py"], settle_s=0.2)
    pipe = CheckpointPipeline(spec, RunPaths(str(root)), Journal(str(root / "events.msgpack")),
                              logging.getLogger("drill"), PREFIX)
    try:
        def checked():
            pipe.tick(time.time())
            names = {n for n in os.listdir(root / "ckpt") if not n.startswith(".")}
            return pipe.pending() == 0 and names and names <= {r["key"] for r in pipe.records()}

        wait_until(checked, 300, 0.05, "the pipeline checked every checkpoint")  # one verifier per file, in turn
        target = pipe.resume_from()
    finally:
        pipe.close()
    step = next(r["step"] for r in pipe.records() if os.path.join(root, r["path"]) == target)
    assert 10 <= step <= STEPS // 2

    resumed = start(code, dict(agent_env(root), RGT_RESUME_FROM=target), "--step-sleep-s", "0", "--save-every", "10")
    out, _ = resumed.communicate(timeout=scaled(180))
    assert resumed.returncode == 0, out
    assert f"resumed from step={step} " in out
    assert bitwise_equal(weights(code / "final.pt"), uninterrupted)
    progress = read_json(str(root / "helper" / "progress.json"))
    assert (progress["step"], progress["phase"], progress["total_steps"]) == (STEPS, "done", STEPS)


@pytest.mark.slow
def test_sigterm_saves_exits_143_and_the_identical_command_resumes_bitwise_equal(uninterrupted, tmp_path):
    root, code, proc = start_at_half(tmp_path, "100000")  # the only checkpoint is the one SIGTERM asks for
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=scaled(60))
    assert proc.returncode == 143, rest
    saved = [line.split("step=")[1].split(",")[0] for line in rest.splitlines() if line.startswith("SIGTERM: saved")]
    assert saved and int(saved[0]) >= STEPS // 2, rest
    assert os.path.exists(root / "ckpt" / f"step_{int(saved[0]):09d}.pt")

    # The identical command again: load_latest() finds the newest checkpoint by itself.
    again = start(code, agent_env(root), "--step-sleep-s", "0", "--save-every", "100000")
    out, _ = again.communicate(timeout=scaled(180))
    assert again.returncode == 0, out
    assert f"resumed from step={saved[0]} " in out
    assert bitwise_equal(weights(code / "final.pt"), uninterrupted)
