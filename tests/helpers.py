"""Test helpers: run the real `rgt` console script and the real agent archive against temp dirs."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from rgt.shared.spec import RunSpec
from tests.conftest import scaled

# The agent may verify a run's last checkpoints for up to this long before it judges the end
# (statusbuild.drain_checkpoints): a test waiting for a marker waits longer than that.
AGENT_DRAIN_S = 300.0

RGT = str(Path(sys.executable).with_name("rgt"))
TRAINER = '''\
import os, sys, time
steps = int(os.environ.get("STEPS", "5"))
sleep_s = float(os.environ.get("STEP_SLEEP_S", "0.2"))
for i in range(1, steps + 1):
    print(f"step={i} loss={1.0 / i:.4f}", flush=True)
    time.sleep(sleep_s)
hold = os.environ.get("HOLD_FILE")
while hold and not os.path.exists(hold):  # a test keeps the trainer alive until it has looked
    time.sleep(0.05)
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
'''


def python_versions() -> Dict[str, str]:
    """CPython 3.8-3.13 interpreters found on this machine (pyenv keeps them), by "3.X"."""
    found = {}
    for exe in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))):
        ver = exe.split("/versions/")[1].split("/")[0]
        major_minor = ".".join(ver.split(".")[:2])
        if major_minor in {f"3.{m}" for m in range(8, 14)}:
            found[major_minor] = exe
    return found


def box_python() -> str:
    """The python3 a box would have: a system interpreter outside the venv."""
    for cand in python_versions().values():
        if "3.11" in cand:
            return cand
    return "python3"


class Env:
    """An isolated controller state dir and local box root for one test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "box"
        self.state = tmp / "state"
        self.project = tmp / "project"
        self.project.mkdir(parents=True, exist_ok=True)
        (self.project / "train.py").write_text(TRAINER)
        self.env = dict(os.environ, RGT_ROOT=str(self.root), RGT_STATE_DIR=str(self.state))

    def rgt(self, *args: str, check: bool = False, timeout: float = 120, extra_env: Optional[dict] = None,
            input: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run the installed `rgt` console script; ``timeout`` is scaled by RGT_TEST_TIME_SCALE."""
        env = dict(self.env, **(extra_env or {}))
        p = subprocess.run([RGT, *args], cwd=self.project, env=env, capture_output=True, text=True,
                           timeout=scaled(timeout), input=input)
        if check and p.returncode != 0:
            raise AssertionError(f"rgt {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def status(self, run_id: str) -> dict:
        try:
            return json.loads((self.run_dir(run_id) / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def marker(self, run_id: str) -> Optional[str]:
        for name in ("DONE", "FAILED", "STOPPED"):
            if (self.run_dir(run_id) / name).exists():
                return name
        return None


def make_run_dir(base: Path, run_id: str, command: List[str], code: Optional[Dict[str, str]] = None,
                 **spec_fields) -> Path:
    """A run dir written by hand (what `rgt up` would leave), for driving the agent archive directly."""
    run = base / "runs" / run_id
    (run / "code").mkdir(parents=True)
    (run / "logs").mkdir()
    for name, text in (code or {"train.py": TRAINER}).items():
        (run / "code" / name).write_text(text)
    spec = RunSpec(run_id=run_id, command=command, created_at=time.time(), **spec_fields)
    (run / "spec.json").write_bytes(spec.to_json())
    return run


def agent_argv(pyz: str, python: Optional[str] = None) -> List[str]:
    """How a box runs the agent archive."""
    return [python or box_python(), "-I", pyz]


def local_bytes(dest) -> int:
    """Every byte under ``dest``: finished files, rsync's temp files and its partial dir."""
    total = 0
    for root, _dirs, names in os.walk(dest):
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
            except FileNotFoundError:
                continue  # rsync renamed it while we walked
    return total


def pull_rsync_of(pid: int):
    """The rsync child of ``rgt pull`` (pid), once it runs the --files-from transfer; else None."""
    import psutil

    for p in psutil.Process(pid).children():
        try:
            if p.name() == "rsync" and any(a.startswith("--files-from") for a in p.cmdline()):
                return p
        except psutil.NoSuchProcess:
            continue
    return None
