"""NaN is a failure whatever the exit code: K consecutive non-finite losses end the attempt as `nan` (real agent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rgt.agent.nanwatch import NanWatch, WatchedLog
from rgt.shared.journal import read_journal
from tests.conftest import scaled, wait_until
from tests.helpers import agent_argv, make_run_dir

# A plain loop: loss NaN from step NAN_FROM on, weights stay finite (so only the policy can tell), a
# checkpoint every 25 steps by rename. HOLD_S: after the K-th NaN report it waits, printing nothing.
LOOP = '''\
import os, sys, time
import torch
nan_from, steps = int(os.environ.get("NAN_FROM", "150")), int(os.environ.get("STEPS", "300"))
recover_at = int(os.environ.get("RECOVER_AT", "0"))
hold_after, hold_s = int(os.environ.get("HOLD_AFTER", "0")), float(os.environ.get("HOLD_S", "0"))
ck = os.environ["RGT_CKPT_DIR"]
print(f"resume_from={os.environ.get('RGT_RESUME_FROM')}", flush=True)
w = torch.ones(4)
for step in range(1, steps + 1):
    bad = step >= nan_from and not (recover_at and step >= recover_at)
    print(f"step={step} loss={float('nan') if bad else 1.0 / step:.4f}", flush=True)
    if step % 25 == 0:
        torch.save({"w": w, "step": step}, os.path.join(ck, ".tmp.pt"))
        os.replace(os.path.join(ck, ".tmp.pt"), os.path.join(ck, f"step_{step}.pt"))
    if step == hold_after:
        time.sleep(hold_s)
    time.sleep(0.005)
'''


def _run(tmp_path, pyz, run_id, env, **spec):
    run = make_run_dir(tmp_path, run_id, [sys.executable, "train.py"], code={"train.py": LOOP}, tick_s=0.3,
                       settle_s=0.2, start_grace_s=0, env=env, **spec)
    p = subprocess.run([*agent_argv(pyz), "daemon", str(run)], capture_output=True, text=True, timeout=scaled(600))
    assert p.returncode == 0, p.stderr
    return run


def _journal(run):
    return read_journal(str(run / "events.msgpack")).records


def test_k_consecutive_log_reports_trip_and_a_finite_one_resets_the_count():
    watch = NanWatch(3)
    log = WatchedLog(watch, "/nonexistent")
    for i, loss in enumerate(["nan", "nan", "0.5", "nan", "inf"], start=10):
        log.feed(f"step={i} loss={loss}", 0.0)
    assert watch.tripped() is None and watch.streak() == (2, "log")
    assert "from step 13" in watch.warning()
    log.feed("step=15 loss=nan", 0.0)
    assert "3 consecutive report(s) from step 13" in watch.tripped()
    log.feed("=== rgt attempt 2 ===", 0.0)  # a new attempt starts from nothing
    assert watch.tripped() is None and log.progress.step is None


def test_nan_at_step_150_with_exit_0_fails_as_nan_within_k_reports_and_resumes_from_the_last_finite(tmp_path, pyz):
    # After the 3rd NaN report the loop holds for ten minutes, printing nothing: only the agent can end it.
    run = _run(tmp_path, pyz, "nan1", {"HOLD_AFTER": "152", "HOLD_S": "600"}, nan_after=3)
    failed = json.loads((run / "FAILED").read_text())
    assert failed["failure"]["class"] == "nan", failed
    assert "from step 150" in failed["failure"]["evidence"] and "3 consecutive" in failed["failure"]["evidence"]
    assert failed["restarts"] == 0 and failed["attempt"] == 1
    assert "lower LR" in failed["failure"]["remediation"]
    assert failed["resume_from"].endswith("step_125.pt"), failed["resume_from"]
    records = _journal(run)
    assert [r for r in records if r.get("kind") == "forced_stop"], "the agent stopped the trainer itself"
    flagged = next(r for r in records if r.get("kind") == "ckpt_after_nan")
    assert any(p.endswith("step_150.pt") for p in flagged["paths"])
    assert sum(r.get("kind") == "launch" for r in records) == 1, "nan is not retried"
    st = json.loads((run / "status.json").read_text())
    assert st["state"] == "failed" and st["checkpoint"]["resume_from"].endswith("step_125.pt")
    assert "step_125.pt" in st["next_action"] and "lower LR" in st["next_action"]
    assert any("AFTER NaN" in w and "step_150.pt" in w for w in st["checkpoint"]["warnings"])
    assert any(s["name"] == "nan" and s["level"] == "critical" for s in st["sentinels"])
    assert "step=160 " not in (run / "logs" / "trainer.log").read_text()


def test_a_run_that_ends_exit_0_with_a_nan_loss_is_nan_even_below_k(tmp_path, pyz):
    run = _run(tmp_path, pyz, "nan2", {"NAN_FROM": "58", "STEPS": "60"}, nan_after=50)
    failed = json.loads((run / "FAILED").read_text())
    assert failed["failure"]["class"] == "nan" and failed["exit_code"] == 0
    assert failed["failure"]["evidence"].startswith("exit code 0, but loss non-finite for 3 consecutive")


def test_a_trainer_that_recovers_before_k_is_only_warned_about(tmp_path, pyz):
    run = _run(tmp_path, pyz, "nan3", {"NAN_FROM": "40", "RECOVER_AT": "42", "STEPS": "60"}, nan_after=3)
    assert (run / "DONE").exists(), (run / "logs" / "agent.log").read_text()
    st = json.loads((run / "status.json").read_text())
    warn = next(s for s in st["sentinels"] if s["name"] == "nan")
    assert warn["level"] == "warn" and "2 consecutive report(s) from step 40" in warn["message"]
    assert "recovered" in warn["message"]


HELPER_LOOP = '''\
import os, time
from rgt.agent import helper
for step in range(1, 100000):
    helper.report(step, loss=float("nan") if step >= 150 else 1.0 / step)
    time.sleep(0.01)
'''


def test_the_helper_s_own_count_of_nan_reports_trips_the_policy(tmp_path, pyz):
    run = make_run_dir(tmp_path, "nanh", [sys.executable, "train.py"], code={"train.py": HELPER_LOOP}, tick_s=0.3,
                       start_grace_s=0, nan_after=5)
    p = subprocess.run([*agent_argv(pyz), "daemon", str(run)], capture_output=True, text=True, timeout=scaled(600))
    assert p.returncode == 0, p.stderr
    failed = json.loads((run / "FAILED").read_text())
    assert failed["failure"]["class"] == "nan", failed
    assert "from step 150 (helper" in failed["failure"]["evidence"]
    assert "stopped by the agent" in failed["failure"]["evidence"], "stopped long before the loop ends"


def test_nan_after_comes_from_the_flag_over_rgt_toml_over_the_default(env):
    def dry(*args):
        p = env.rgt("up", "local", "--dry-run", *args, "--", "python3", "train.py")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)["spec"]["nan_after"]

    assert dry() == 3
    (env.project / "rgt.toml").write_text("[run]\nnan_after = 7\n")
    assert dry() == 7
    assert dry("--nan-after", "2") == 2
    bad = env.rgt("up", "local", "--dry-run", "--nan-after", "0", "--", "python3", "train.py")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_the_helper_counts_each_new_loss_once_and_a_re_sent_one_not_again(tmp_path):
    from rgt.agent.helper import Helper

    h = Helper(env={"RGT_STATUS_DIR": str(tmp_path)}, clock=iter(range(0, 10**6, 10)).__next__)
    logged = float("nan")  # HF's callback re-sends the last logged loss at every step
    for step in (10, 11, 12):
        h.report(step, loss=logged)
    assert h._nan_streak == 1
    h.report(20, loss=float("nan"))
    doc = json.loads((tmp_path / "progress.json").read_text())
    assert (doc["nonfinite_streak"], doc["nonfinite_first_step"], doc["nonfinite"]) == (2, 10, ["loss"])
    h.report(21, loss=0.5)
    assert json.loads((tmp_path / "progress.json").read_text())["nonfinite_streak"] == 0


def test_a_real_hf_trainer_whose_loss_turns_nan_fails_as_nan_and_resumes_from_the_last_finite_checkpoint(
        env, trainer_python):
    from tests.conftest import REPO

    with open(os.path.join(REPO, "tests", "trainers", "hf_nan.py")) as f:
        (env.project / "train.py").write_text(f.read())
    env.rgt("up", "local", "--run", "hfnan", "--tick-s", "0.5", "--trainer-python", trainer_python, "--",
            trainer_python, "train.py", "13", "5", check=True)
    wait_until(lambda: env.marker("hfnan"), 600, what="the HF run's end")
    failed = json.loads((env.run_dir("hfnan") / "FAILED").read_text())
    assert failed["failure"]["class"] == "nan" and "from step 13" in failed["failure"]["evidence"], failed
    assert failed["restarts"] == 0
    assert failed["resume_from"] and failed["resume_from"].endswith("checkpoint-10"), failed["resume_from"]
