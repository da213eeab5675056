"""Checkpoint goals (design section 11), as ratios against a baseline measured in the same run.

(a) the training loop's blocked time in helper.save() against torch.save + fsync of the same state
    (goal <= 0.1x); the tensors change right after save() returns and the file must hold the old values;
(b) the agent pipeline's sha256 + verify + durable copy against `sha256sum` + `cp` + fsync of the same
    file (throughput, goal >= 0.8x).

    .venv/bin/python benchmarks/ckpt_stall.py [--quick] [--size-mib N] [--dir D] [--durable D] [--strict]

The state is about 1 GiB by default (--quick: 64 MiB). It needs about 3x the state in RAM, and 2x on
--dir and on --durable (which must be another filesystem than --dir; /dev/shm by default).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from rgt.agent.ckpt.pipeline import CheckpointPipeline
from rgt.agent.helper import Helper
from rgt.shared.journal import Journal
from rgt.shared.paths import RunPaths
from rgt.shared.spec import RunSpec

TENSOR_MIB = 64


def make_state(size_mib: int) -> dict:
    n = max(1, size_mib // TENSOR_MIB)
    per = min(size_mib, TENSOR_MIB) * (1 << 20) // 4
    return {"model": {f"layer{i}.weight": torch.full((per,), float(i)) for i in range(n)}, "step": 0}


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stall(state: dict, work: str) -> tuple:
    """(baseline_s, blocked_s, cold_blocked_s, checkpoint path)."""
    base = os.path.join(work, "baseline.pt")
    t0 = time.perf_counter()
    torch.save(state, base)
    fsync_path(base)
    baseline_s = time.perf_counter() - t0
    os.unlink(base)

    h = Helper(env={"RGT_CKPT_DIR": os.path.join(work, "ckpt")})
    t0 = time.perf_counter()
    h.save(state, 1)  # the first save allocates the snapshot buffers
    cold_s = time.perf_counter() - t0
    h.wait()
    t0 = time.perf_counter()
    path = h.save(state, 2)
    blocked_s = time.perf_counter() - t0
    for t in state["model"].values():  # the loop moves on at once
        t.add_(1.0)
    h.wait()
    os.unlink(os.path.join(work, "ckpt", "step_000000001.pt"))
    got = torch.load(path, weights_only=True, mmap=True)
    for k, t in state["model"].items():
        if not torch.equal(got["model"][k], t - 1.0):
            sys.exit(f"FAIL: {path} does not hold the values as of save() for {k}")
    del got
    return baseline_s, blocked_s, cold_s, path


def baseline_copy(path: str, durable: str) -> float:
    dest = os.path.join(durable, "baseline-copy.pt")
    t0 = time.perf_counter()
    subprocess.run(["sha256sum", path], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cp", path, dest], check=True)
    fsync_path(dest)
    elapsed = time.perf_counter() - t0
    os.unlink(dest)
    return elapsed


def pipeline_copy(path: str, work: str, durable: str) -> float:
    root = os.path.join(work, "runs", "bench")
    os.makedirs(os.path.join(root, "ckpt"))
    os.link(path, os.path.join(root, "ckpt", "step_000000002.pt"))
    spec = RunSpec(run_id="bench", command=["true"], durable_dir=durable, settle_s=0.0)
    pipe = CheckpointPipeline(spec, RunPaths(root), Journal(os.path.join(root, "events.msgpack")),
                              logging.getLogger("bench"), [sys.executable, "-m", "rgt.agent.ckpt.verify"])
    pipe.set_trainer_running(False)
    pipe.start()
    try:
        t0 = time.perf_counter()
        while True:
            events = pipe.tick(time.time())
            done = [e for e in events if e["kind"].startswith("ckpt_") and e.get("path", "").endswith(".pt")]
            if done:
                break
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
    finally:
        pipe.close()
    if done[0]["kind"] != "ckpt_verified" or not done[0].get("durable"):
        sys.exit(f"FAIL: the pipeline did not verify and copy the checkpoint: {done[0]}")
    shutil.rmtree(os.path.join(durable, "rgt", "bench"))
    return elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 MiB instead of 1 GiB")
    p.add_argument("--size-mib", type=int, default=None)
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where checkpoints are written (a real disk)")
    p.add_argument("--durable", default="/dev/shm", help="another filesystem, for the durable copy")
    p.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    a = p.parse_args()
    size = a.size_mib or (64 if a.quick else 1024)
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="rgt-ckpt-bench-", dir=a.dir)
    durable = tempfile.mkdtemp(prefix="rgt-ckpt-bench-", dir=a.durable)
    if os.stat(work).st_dev == os.stat(durable).st_dev:
        sys.exit(f"--durable {a.durable} is on the same filesystem as --dir {a.dir}")
    try:
        state = make_state(size)
        print(f"state: {size} MiB in {len(state['model'])} tensors; writing to {work}, durable copy to {durable}")
        base_s, blocked_s, cold_s, path = stall(state, work)
        del state
        stall_ratio = blocked_s / base_s
        print(f"(a) torch.save+fsync {base_s:.3f} s; save() blocked {blocked_s:.3f} s (first save {cold_s:.3f} s);"
              f" file holds the values as of save(): yes")
        print(f"    stall ratio {stall_ratio:.3f}x (goal <= 0.1x): {'met' if stall_ratio <= 0.1 else 'MISSED'}")
        copy_base_s = baseline_copy(path, durable)
        ours_s = pipeline_copy(path, work, durable)
        tput = copy_base_s / ours_s
        print(f"(b) sha256sum+cp+fsync {copy_base_s:.3f} s; pipeline hash+verify+copy {ours_s:.3f} s")
        print(f"    throughput ratio {tput:.2f}x (goal >= 0.8x): {'met' if tput >= 0.8 else 'MISSED'}"
              + (" (--quick: the verifier's interpreter and torch start-up dominate small files)"
                 if tput < 0.8 and size < 512 else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(durable, ignore_errors=True)
    missed = stall_ratio > 0.1 or tput < 0.8
    return 1 if a.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
