"""Measures, on this machine: trainer exit -> status.json showing it, and the agent's idle CPU and RSS.

Baselines in the same run: the 1 s floor for latency, and a bash patrol loop (df + ps every 5 s, the
seed's approach) for the idle cost. Usage: python benchmarks/detect_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import box_python, build_archive, cpu_seconds, make_run, median, read_status, rss_bytes  # noqa: E402

EXITER = """\
import sys, time
time.sleep(1.0)
open("exit_time", "w").write(repr(time.time()))
sys.exit(3)
"""


def latency_once(tmp: Path, archive: str, i: int) -> float:
    run = make_run(tmp, f"lat{i}", ["python3", "exit.py"], {"exit.py": EXITER}, max_restarts=0)
    agent = subprocess.Popen([box_python(), "-I", archive, "daemon", str(run)], stdout=subprocess.DEVNULL)
    while True:
        st = read_status(run)
        if st.get("trainer", {}).get("exit_code") == 3:
            seen = time.time()
            break
        time.sleep(0.001)
    agent.wait(timeout=30)
    return seen - float((run / "code" / "exit_time").read_text())


def idle_cost(tmp: Path, archive: str, window_s: float):
    run = make_run(tmp, "idle", ["sleep", str(window_s + 30)], {})
    agent = subprocess.Popen([box_python(), "-I", archive, "daemon", str(run)], stdout=subprocess.DEVNULL)
    while read_status(run).get("state") != "running":
        time.sleep(0.05)
    time.sleep(2.0)  # past start-up work
    patrol = subprocess.Popen(["bash", "-c", "while :; do df >/dev/null; ps aux >/dev/null; sleep 5; done"])
    waiter = json.loads((run / "trainer.json").read_text())["waiter_pid"]
    a0, w0, p0 = cpu_seconds(agent.pid), cpu_seconds(waiter), cpu_seconds(patrol.pid, children=True)
    t0 = time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - t0
    a1, w1, p1 = cpu_seconds(agent.pid), cpu_seconds(waiter), cpu_seconds(patrol.pid, children=True)
    rss = rss_bytes(agent.pid)
    patrol.kill()
    subprocess.run([box_python(), "-I", archive, "stop", str(run)], capture_output=True)
    agent.wait(timeout=60)
    return (a1 - a0 + w1 - w0) / elapsed, (p1 - p0) / elapsed, rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 latency runs and a 15 s idle window")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        archive = build_archive(tmp / "pyz")
        lats = [latency_once(tmp, archive, i) for i in range(3 if args.quick else 7)]
        lat = median(lats)
        print(f"trainer exit -> status.json: median {lat * 1000:.0f} ms over {len(lats)} runs "
              f"(max {max(lats) * 1000:.0f} ms); ratio to the 1 s floor: {lat / 1.0:.3f}x (goal < 1)")
        window = 15.0 if args.quick else 60.0
        agent_share, patrol_share, rss = idle_cost(tmp, archive, window)
        print(f"idle agent (default 2 s tick, all sentinels) over {window:.0f} s: "
              f"{agent_share * 100:.3f} % of one core, "
              f"RSS {rss / 2**20:.1f} MiB (goals < 0.5 %, < 40 MiB)")
        print(f"bash patrol loop (df + ps every 5 s): {patrol_share * 100:.3f} % of one core; "
              f"agent/patrol ratio {agent_share / patrol_share if patrol_share else float('nan'):.2f}x")


if __name__ == "__main__":
    main()
