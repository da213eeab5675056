"""`rgt up --allow-pickle` and `[run] allow_pickle` let a pickle be the box's resume target, never run it.

Verification still never unpickles it, and the laptop's own --allow-pickle is gone.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import torch

from rgt.agent.ckpt.pipeline import CheckpointPipeline
from rgt.shared.journal import Journal
from rgt.shared.paths import RunPaths
from rgt.shared.spec import RunSpec
from tests.conftest import wait_until

PREFIX = [sys.executable, "-m", "rgt.agent.ckpt.verify"]


class Evil:
    """Writes the marker file when unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def dry_spec(env, *flags: str) -> dict:
    p = env.rgt("up", "local", *flags, "--dry-run", "--json", "--", "python3", "train.py", check=True)
    return json.loads(p.stdout)["spec"]


def test_allow_pickle_is_off_by_default_and_set_by_the_flag_or_rgt_toml(env):
    assert dry_spec(env)["allow_pickle"] is False
    assert dry_spec(env, "--allow-pickle")["allow_pickle"] is True
    (env.project / "rgt.toml").write_text("[run]\nallow_pickle = true\n")
    assert dry_spec(env)["allow_pickle"] is True


def test_with_allow_pickle_a_pickle_is_the_resume_target_yet_the_verifier_never_runs_it(tmp_path):
    root = tmp_path / "runs" / "r1"
    ckpt = root / "ckpt"
    ckpt.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    torch.save({"w": torch.ones(2), "hook": Evil(str(marker))}, ckpt / "step_5.pt")
    spec = RunSpec(run_id="r1", command=["python", "train.py"], settle_s=0.2, allow_pickle=True)
    paths = RunPaths(str(root))
    pipe = CheckpointPipeline(spec, paths, Journal(paths.journal), logging.getLogger("allow-pickle"), PREFIX)
    try:
        def checked():
            pipe.tick(time.time())
            return pipe.pending() == 0 and pipe.records()

        (rec,) = wait_until(checked, 300, 0.05, "the pickle checked")
        assert rec["state"] == "unverified_pickle" and "GLOBAL exec" in rec["detail"]
        assert pipe.resume_from() == os.path.join(str(ckpt), "step_5.pt")
        assert not marker.exists(), "the verifier ran the pickle's code"
    finally:
        pipe.close()


def test_the_laptops_allow_pickle_points_to_rgt_up(env):
    p = env.rgt("verify", str(env.tmp), "--allow-pickle")
    assert p.returncode == 2
    assert "rgt up --allow-pickle" in p.stderr and "Traceback" not in p.stderr
