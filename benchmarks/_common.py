"""Shared bits of the benchmarks (laptop side): temp run dirs, the agent archive, /proc CPU and RSS readings."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rgt.shared.spec import RunSpec  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of a process (plus its reaped children's when asked), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def rss_bytes(pid: int) -> Optional[int]:
    """VmRSS of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def make_run(base: Path, run_id: str, command: List[str], code: Dict[str, str], **fields) -> Path:
    """A run dir as `rgt up` leaves it."""
    run = base / "runs" / run_id
    (run / "code").mkdir(parents=True)
    (run / "logs").mkdir()
    for name, text in code.items():
        (run / "code" / name).write_text(text)
    (run / "spec.json").write_bytes(RunSpec(run_id=run_id, command=command, created_at=time.time(), **fields).to_json())
    return run


def build_archive(out: Path) -> str:
    """The agent archive, built as the controller builds it."""
    from rgt.controller import pyz

    return pyz.build(str(out))[0]


def box_python() -> str:
    """A system python3 outside the venv, like a box's."""
    for cand in sorted(Path.home().glob(".pyenv/versions/3.11*/bin/python3")):
        return str(cand)
    return "python3"


def read_status(run: Path) -> dict:
    """status.json, or {} mid-write."""
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def median(xs: List[float]) -> float:
    """Median of a non-empty list."""
    return statistics.median(xs)
