"""Measures, on this machine: the first non-finite loss report -> the trainer stopped, as a ratio to the tick.

The trainer prints `step=N loss=nan` every 50 ms from step 20 on and writes the wall time of its first
non-finite report; the waiter's exit.json says when it ended. With the default nan_after = 3 the agent
acts at its first tick after the 3rd report. Usage: python benchmarks/nan_stop.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from _common import box_python, build_archive, make_run, median

TRAINER = """\
import time
for step in range(1, 100000):
    bad = step >= 20
    if step == 20:
        open("first_nan_at", "w").write(repr(time.time()))
    print(f"step={step} loss={'nan' if bad else 1.0 / step}", flush=True)
    time.sleep(0.05)
"""


def once(tmp: Path, archive: str, tick_s: float, i: int) -> tuple:
    run = make_run(tmp, f"nan{i}", ["python3", "train.py"], {"train.py": TRAINER}, tick_s=tick_s, max_restarts=0)
    agent = subprocess.run([box_python(), "-I", archive, "daemon", str(run)], capture_output=True, timeout=300)
    assert agent.returncode == 0, agent.stderr
    failed = json.loads((run / "FAILED").read_text())
    assert failed["failure"]["class"] == "nan", failed
    ended = json.loads((run / "exit.json").read_text())["ended_at"]
    first = float((run / "code" / "first_nan_at").read_text())
    reports = (run / "logs" / "trainer.log").read_text().count("loss=nan")
    return (ended - first) / tick_s, reports


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 runs per tick instead of 5")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        archive = build_archive(tmp / "pyz")
        i = 0
        for tick_s in (0.5, 1.0, 2.0):
            results = []
            for _ in range(2 if args.quick else 5):
                results.append(once(tmp, archive, tick_s, i))
                i += 1
            ratios = [r for r, _ in results]
            print(f"tick {tick_s:.1f} s: first non-finite report -> trainer stopped: median {median(ratios):.2f}x "
                  f"the tick (max {max(ratios):.2f}x over {len(ratios)} runs); non-finite reports printed before "
                  f"the stop: {sorted(n for _, n in results)} (nan_after 3, one report per 50 ms)")


if __name__ == "__main__":
    main()
