"""Measures, on this machine: the agent's idle CPU with checkpoint discovery on a 10,000-file working tree.

Baseline in the same run: the same agent, same tree, watching only $RGT_CKPT_DIR (``ckpt_watch_code`` off).
Both agents run side by side over the same window (default tick, all sentinels), so the machine's load
falls on both. The floor (design section 11): under 0.5 % of one core.
Usage: python -m benchmarks.discovery_idle [--quick] [--files N] [--window-s S]
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

from benchmarks._common import box_python, build_archive, cpu_seconds, make_run, read_status, rss_bytes  # noqa: E402

FLOOR_PCT = 0.5


def fill_tree(code: Path, files: int) -> None:
    """A project-like tree: 100 files a dir, two levels, sources, data, a few uploaded weights, a .git."""
    per_dir = 100
    for i in range(files):
        d = code / f"pkg{i // (per_dir * 10):02d}" / f"mod{(i // per_dir) % 10:02d}"
        d.mkdir(parents=True, exist_ok=True)
        name = f"f{i:05d}.pt" if i % 2500 == 0 else (f"f{i:05d}.py" if i % 3 else f"f{i:05d}.json")
        (d / name).write_text("x = 1\n")
    (code / ".git" / "objects").mkdir(parents=True, exist_ok=True)


def start(tmp: Path, archive: str, run_id: str, files: int, watch_code: bool, hold_s: float):
    run = make_run(tmp, run_id, ["sleep", str(hold_s)], {}, extra={"ckpt_watch_code": watch_code})
    fill_tree(run / "code", files)
    agent = subprocess.Popen([box_python(), "-I", archive, "daemon", str(run)], stdout=subprocess.DEVNULL)
    return run, agent


def watch_mode(run: Path) -> str:
    """"inotify" or "polling", as the agent journaled it."""
    from rgt.shared.journal import read_journal

    for rec in read_journal(str(run / "events.msgpack")).records:
        if rec.get("kind") == "ckpt_watch":
            return str(rec.get("mode"))
    return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 20 s window instead of 120 s")
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--window-s", type=float, default=None)
    args = ap.parse_args()
    window_s = args.window_s or (20.0 if args.quick else 120.0)
    with tempfile.TemporaryDirectory(prefix="rgt-bench-disc-") as d:
        tmp = Path(d)
        archive = build_archive(tmp / "pyz")
        hold_s = window_s + 120
        runs = {name: start(tmp, archive, f"disc-{name}", args.files, name == "discovery", hold_s)
                for name in ("discovery", "ckpt-only")}
        try:
            for run, _agent in runs.values():
                deadline = time.monotonic() + 120
                while read_status(run).get("state") != "running" and time.monotonic() < deadline:
                    time.sleep(0.1)
            time.sleep(5.0)  # past start-up work: the baseline scan and the inotify watches
            watchers = {name: read_status(run).get("checkpoint", {}).get("watch_dirs") for name, (run, _a) in
                        runs.items()}
            before = {name: cpu_seconds(a.pid) for name, (_r, a) in runs.items()}
            t0 = time.monotonic()
            time.sleep(window_s)
            elapsed = time.monotonic() - t0
            pct = {name: 100.0 * (cpu_seconds(a.pid) - before[name]) / elapsed for name, (_r, a) in runs.items()}
            rss = {name: rss_bytes(a.pid) for name, (_r, a) in runs.items()}
            modes = {name: watch_mode(run) for name, (run, _a) in runs.items()}
        finally:
            for run, _agent in runs.values():
                subprocess.run([box_python(), "-I", archive, "stop", str(run)], capture_output=True)
            for _run, agent in runs.values():
                try:
                    agent.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    agent.kill()
    ratio = pct["discovery"] / pct["ckpt-only"] if pct["ckpt-only"] > 0 else float("inf")
    ok = pct["discovery"] < FLOOR_PCT
    print(json.dumps({"files": args.files, "window_s": round(elapsed, 1), "watch_dirs": watchers, "watch_mode": modes,
                      "agent_cpu_pct_discovery": round(pct["discovery"], 3),
                      "agent_cpu_pct_ckpt_only": round(pct["ckpt-only"], 3),
                      "ratio": round(ratio, 2), "rss_bytes": rss, "floor_pct": FLOOR_PCT, "ok": ok}, indent=1))
    print(f"discovery on {args.files} files: {pct['discovery']:.3f}% of a core vs {pct['ckpt-only']:.3f}% "
          f"watching $RGT_CKPT_DIR only (ratio {ratio:.2f}); floor {FLOOR_PCT}%: {'ok' if ok else 'ABOVE'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
