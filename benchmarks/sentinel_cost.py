"""Benchmark (any machine): CPU cost of one tick of all sentinels against a spawned `df -P` + `df -i` patrol.

Both run in the same process, on the same mounts. Goal (design section 11): the sentinels' tick costs at
most 0.05x the df patrol, and the whole sentinel set stays far under 0.5 % of one core at a 2 s tick.
Run: .venv/bin/python benchmarks/sentinel_cost.py [--reps 2000] [--df-reps 100]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time

from rgt.agent.sentinels import build_sentinels
from rgt.agent.sentinels.disk import group_mounts


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def bench_sentinels(runner, reps: int) -> float:
    """CPU seconds per tick with every sentinel due (the worst tick)."""
    for s in runner.sentinels:  # warm: NVML init, cgroup lookup, imports
        s.check(0.0)
    start = time.process_time()
    for i in range(reps):
        for s in runner.sentinels:
            s.check(float(i))
    return (time.process_time() - start) / reps


def bench_idle(runner, seconds: float, tick_s: float) -> float:
    """Fraction of one core the runner uses at the agent's tick over ``seconds`` of simulated time."""
    start = time.process_time()
    now = 1000.0
    for _ in range(int(seconds / tick_s)):
        runner.tick(now)
        now += tick_s
    return (time.process_time() - start) / seconds


def bench_df(mounts, reps: int) -> tuple:
    """(CPU seconds incl. children, wall seconds) per `df -P` + `df -i` patrol."""
    own, kids, wall = time.process_time(), _children_cpu(), time.perf_counter()
    for _ in range(reps):
        subprocess.run(["df", "-P", *mounts], capture_output=True, check=True)
        subprocess.run(["df", "-i", *mounts], capture_output=True, check=True)
    cpu = (time.process_time() - own) + (_children_cpu() - kids)
    return cpu / reps, (time.perf_counter() - wall) / reps


def main() -> None:
    """Print the numbers and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000, help="sentinel ticks to time")
    ap.add_argument("--df-reps", type=int, default=100, help="df patrols to time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        os.makedirs(os.path.join(run, "ckpt"))
        watch = {"run": run, "ckpt": os.path.join(run, "ckpt"),
                 "hf_cache": os.path.expanduser("~/.cache/huggingface")}
        runner = build_sentinels(watch, own_pids=lambda: [])
        mounts = [m.dirs[0] for m in group_mounts(list(watch.items()) + [("/tmp", "/tmp"), ("shm", "/dev/shm")])]
        per_tick = bench_sentinels(runner, args.reps)
        idle = bench_idle(runner, 3600.0, 2.0)
        df_cpu, df_wall = bench_df(mounts, args.df_reps)
        nvml = next(s.nvml for s in runner.sentinels if getattr(s, "nvml", None) is not None)
        gpu_note = f"{nvml.count} GPU(s)" if nvml.ready else f"no NVML here ({nvml.reason})"
        runner.close()
    print(f"mounts watched: {len(mounts)} ({', '.join(mounts)}); {gpu_note}")
    print(f"sentinels, all due:  {per_tick * 1e6:9.1f} us CPU per tick ({args.reps} reps, in process)")
    print(f"df -P + df -i:       {df_cpu * 1e6:9.1f} us CPU per patrol, {df_wall * 1e3:.2f} ms wall "
          f"({args.df_reps} reps, spawned)")
    print(f"idle cost at a 2 s tick (intervals applied): {idle * 100:.4f} % of one core (goal < 0.5 %)")
    ratio = per_tick / df_cpu if df_cpu else float("inf")
    print(f"ratio sentinels/df: {ratio:.4f}x (goal <= 0.05x): {'OK' if ratio <= 0.05 else 'ABOVE GOAL'}")


if __name__ == "__main__":
    main()
