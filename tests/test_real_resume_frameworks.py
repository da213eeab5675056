"""Real Lightning and HF Trainer runs under `rgt up local`, killed with -9 mid-run, resume and succeed.

The next attempt resumes from the newest verified checkpoint by the framework's own resume, nothing is
quarantined, and the pull verifies in rgt's own venv (no lightning, transformers or accelerate there), so
that `rgt down` passes.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from rgt.shared.journal import read_journal
from tests.conftest import REPO, wait_until
from tests.helpers import AGENT_DRAIN_S

TRAINERS = os.path.join(REPO, "tests", "trainers")


def attempts(env, run: str) -> list:
    try:
        text = (env.run_dir(run) / "code" / "attempts.jsonl").read_text()
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def journal(env, run: str) -> list:
    return read_journal(str(env.run_dir(run) / "events.msgpack")).records


def start_then_kill_9(env, trainer_python, run: str, script: str, steps: int, every: int, *args: str) -> int:
    """Start the run; the trainer holds after its first save; once that checkpoint verified, kill -9 it."""
    with open(os.path.join(TRAINERS, script)) as f:
        (env.project / "train.py").write_text(f.read())
    env.rgt("up", "local", "--run", run, "--tick-s", "0.5", "--trainer-python", trainer_python, "--",
            trainer_python, "train.py", str(steps), str(every), "0.05", *args, check=True)
    last = wait_until(lambda: (env.status(run).get("checkpoint") or {}).get("last_step"), 300,
                      what="a first verified checkpoint")
    assert last == every
    log = env.run_dir(run) / "logs" / "trainer.log"
    wait_until(lambda: "holding at global_step" in log.read_text(), 120, what="the trainer holding mid-run")
    pid = json.loads((env.run_dir(run) / "trainer.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    return int(last)


def assert_resumed_and_never_quarantined(env, run: str, steps: int, killed_after: int) -> dict:
    """The second attempt started where a verified checkpoint left off and finished; returns attempt 2's start."""
    wait_until(lambda: env.marker(run), AGENT_DRAIN_S + 300, what="the run's marker")
    assert env.marker(run) == "DONE", (env.run_dir(run) / "logs" / "agent.log").read_text()[-3000:]
    notes = attempts(env, run)
    first = [n for n in notes if n["attempt"] == "1"]
    assert first[0] == {"event": "start", "global_step": 0, "attempt": "1", "resume_from": None}
    assert not any(n["event"] == "end" for n in first), "attempt 1 was not killed mid-run"
    start2, end2 = [n for n in notes if n["attempt"] == "2"]
    assert start2["event"] == "start" and start2["resume_from"], notes
    assert start2["global_step"] == killed_after > 0, "the framework's own global step continues"
    assert end2 == dict(start2, event="end", global_step=steps)
    recs = journal(env, run)
    launch2 = [r for r in recs if r["kind"] == "launch" and r.get("attempt") == 2]
    assert launch2 and launch2[0]["resume_from"] == start2["resume_from"], "the journal names the target"
    bad = [r for r in recs if r["kind"] in ("ckpt_quarantined", "ckpt_nonfinite", "ckpt_corrupt",
                                           "ckpt_unverified_pickle", "ckpt_unverifiable")]
    assert bad == [], bad
    assert not os.path.isdir(env.run_dir(run) / "quarantine") or not os.listdir(env.run_dir(run) / "quarantine")
    index = json.loads((env.run_dir(run) / "ckpt_index.json").read_text())
    assert {r["state"] for r in index["records"]} == {"verified"}, index
    return start2


def pull_and_down(env, run: str) -> str:
    """`rgt pull` verifies with rgt's own venv; `rgt down` passes its gate (local: nothing to release)."""
    import importlib.util

    assert importlib.util.find_spec("transformers") is None and importlib.util.find_spec("lightning") is None
    dest = env.tmp / "pulled"
    p = env.rgt("pull", run, "--dest", str(dest), timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (dest / "PULL_VERIFIED.json").exists()
    down = env.rgt("down", run, "--confirm", run, timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"verified pull of {run}" in down.stdout + down.stderr, "the gate passed on this pull"
    return p.stdout + p.stderr


@pytest.mark.slow
def test_lightning_killed_9_resumes_from_its_newest_verified_ckpt_and_succeeds(env, trainer_python):
    """The default ModelCheckpoint saves under ./checkpoints/ in the working dir, where the agent looks too."""
    steps, every = 40, 20
    killed_after = start_then_kill_9(env, trainer_python, "lt1", "lightning_resume.py", steps, every)
    start2 = assert_resumed_and_never_quarantined(env, "lt1", steps, killed_after)
    assert start2["resume_from"] == str(env.run_dir("lt1") / "code" / "checkpoints" / "epoch=0-step=20.ckpt")
    assert "loaded with weights_only" in pull_and_down(env, "lt1")


@pytest.mark.slow
def test_hf_trainer_killed_9_resumes_from_checkpoint_n_without_allow_pickle_and_down_passes(env, trainer_python):
    steps, every = 40, 20
    killed_after = start_then_kill_9(env, trainer_python, "hf1", "hf_resume.py", steps, every)
    spec = json.loads((env.run_dir("hf1") / "spec.json").read_text())
    assert spec["allow_pickle"] is False
    start2 = assert_resumed_and_never_quarantined(env, "hf1", steps, killed_after)
    assert start2["resume_from"] == str(env.run_dir("hf1") / "ckpt" / "checkpoint-20")
    index = json.loads((env.run_dir("hf1") / "ckpt_index.json").read_text())
    assert all(r["hash_only"] == ["training_args.bin"] and r["coverage"] == "partial" for r in index["records"])
    assert "training_args.bin" in env.status("hf1")["checkpoint"]["last_checks"]
    plain = env.rgt("status", "hf1").stdout
    assert "verified; hash only (metadata, never unpickled): training_args.bin" in plain, plain
    out = pull_and_down(env, "hf1")
    assert "loaded with weights_only" in out, out  # the summary says how the checkpoints were checked
