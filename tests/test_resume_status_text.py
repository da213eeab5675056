"""Plain `rgt status` tells the truth: checkpoint warnings, the resume target, NaN, and this attempt's own log."""

from __future__ import annotations

import json
import sys

from tests.conftest import wait_until
from tests.test_nan_policy import LOOP as NAN_LOOP

PICKLES = '''\
import os
import torch
ck = os.environ["RGT_CKPT_DIR"]

class Config:  # a checkpoint holding an object needs full unpickling to load
    lr = 3e-4

def put(name, obj):
    tmp = os.path.join(ck, name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, os.path.join(ck, name))

put("step_1.pt", {"w": torch.ones(2)})
print("step=1 loss=0.5", flush=True)
put("step_2.pt", {"w": torch.ones(2), "cfg": Config()})
put("step_3.pt", {"w": torch.tensor([1.0, float("nan")])})  # quarantined: a NaN in the weights
print("step=3 loss=0.25", flush=True)
'''

# Attempt 1 leaves a tqdm bar unfinished (no newline) and crashes; attempt 2 waits for the test, then
# crashes with its own last line.
BAR = '''\
import os, sys, time
if os.environ["RGT_ATTEMPT"] == "1":
    print("UserWarning: stale warning from attempt 1", flush=True)
    sys.stdout.write("\\r 50%|#####     | 5/10 [00:01<00:01, 4.00it/s]")
    sys.stdout.flush()
    sys.exit(1)
while not os.path.exists(os.environ["GO_FILE"]):
    time.sleep(0.05)
print("attempt two's own last line", flush=True)
sys.exit(1)
'''


def test_plain_status_after_a_nan_names_the_resume_target_the_excluded_checkpoint_and_the_nan(env):
    (env.project / "train.py").write_text(NAN_LOOP)
    env.rgt("up", "local", "--run", "nanst", "--tick-s", "0.3", "--", sys.executable, "train.py", check=True,
            extra_env={"HOLD_AFTER": "152", "HOLD_S": "600"})
    wait_until(lambda: env.marker("nanst"), 240, what="the NaN run's end")
    out = env.rgt("status", "nanst", check=True).stdout
    assert "last failure: nan: loss non-finite for 3 consecutive report(s) from step 150" in out, out
    assert "checkpoint: newest verified ckpt/step_150.pt (step 150); resume target ckpt/step_125.pt" in out, out
    assert "WARNING checkpoint AFTER NaN ckpt/step_150.pt" in out, out
    assert "critical nan: the trainer was stopped" in out, out
    assert "resumes from ckpt/step_125.pt" in out and "lower LR" in out, out


def test_plain_status_shows_unverified_pickles_and_quarantined_checkpoints(env):
    (env.project / "train.py").write_text(PICKLES)
    env.rgt("up", "local", "--run", "ckw", "--tick-s", "0.3", "--", sys.executable, "train.py", check=True)
    wait_until(lambda: env.marker("ckw"), 240, what="the run's end")
    out = env.rgt("status", "ckw", check=True).stdout
    assert "resume target ckpt/step_1.pt" in out, out
    assert "WARNING checkpoint UNVERIFIED PICKLE ckpt/step_2.pt" in out and "--allow-pickle" in out, out
    assert "WARNING checkpoint QUARANTINED ckpt/step_3.pt" in out, out


def test_each_attempt_has_its_own_banner_progress_and_crash_evidence(env):
    (env.project / "train.py").write_text(BAR)
    go = env.tmp / "go"
    env.rgt("up", "local", "--run", "bar", "--tick-s", "0.3", "--max-restarts", "1", "--", sys.executable,
            "train.py", check=True, extra_env={"GO_FILE": str(go)})
    log = env.run_dir("bar") / "logs" / "trainer.log"
    wait_until(lambda: log.exists() and "=== rgt attempt 2 ===" in log.read_text(), 120, what="attempt 2's banner")
    assert "4.00it/s]\n=== rgt attempt 2 ===\n" in log.read_text(), "the banner is on its own line"
    st = wait_until(lambda: env.status("bar").get("trainer", {}).get("attempt") == 2
                    and env.status("bar").get("state") == "running" and env.status("bar"), 120, what="attempt 2")
    assert st["progress"]["step"] is None, "attempt 1's step 5 of 10 does not linger"
    go.write_text("")
    wait_until(lambda: env.marker("bar"), 120, what="the end")
    failed = json.loads((env.run_dir("bar") / "FAILED").read_text())
    evidence = failed["failure"]["evidence"]
    assert "attempt two's own last line" in evidence and "stale warning" not in evidence, evidence
