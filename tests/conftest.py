"""Shared test fixtures: real-part gating, polling waits, and reaping of every child a test leaves."""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, Optional

import psutil
import pytest

REQUIRE_REAL = os.environ.get("RGT_REQUIRE_REAL") == "1"
# One constant scales every bound a test waits with (a busy CI machine sets it above 1).
TIME_SCALE = float(os.environ.get("RGT_TEST_TIME_SCALE", "1") or "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER_VENV_PYTHON = os.path.join(REPO, ".venv-trainer", "bin", "python")


def require_real(available: bool, reason: str) -> None:
    """Skip when a real part is missing; in CI (RGT_REQUIRE_REAL=1) that is a failure instead."""
    if available:
        return
    if REQUIRE_REAL:
        pytest.fail(f"real part unavailable with RGT_REQUIRE_REAL=1: {reason}")
    pytest.skip(f"real part unavailable: {reason}")


def scaled(seconds: float) -> float:
    """A bound in seconds, scaled by RGT_TEST_TIME_SCALE: every wait and subprocess timeout goes through this."""
    return seconds * TIME_SCALE


def wait_until(cond: Callable[[], object], timeout_s: float = 120.0, interval_s: float = 0.05,
               what: Optional[str] = None) -> object:
    """Poll ``cond`` until it returns a truthy value; fail the test with ``what`` on timeout."""
    timeout_s = scaled(timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what or cond}")
        time.sleep(interval_s)


def _descendants_and_strays(run_marker: str) -> list[psutil.Process]:
    procs = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid == os.getpid():
                continue
            env = p.environ()
        except (psutil.Error, OSError):
            continue
        if env.get("RGT_TEST_SESSION") == run_marker:
            procs.append(p)
    return procs


@pytest.fixture(autouse=True)
def reap_children():
    """Kill every process this test started, including detached agents, waiters and trainers.

    Children are found by a per-test marker in their environment (they inherit it even after setsid),
    so nothing outside the test is ever touched.
    """
    marker = f"{os.getpid()}-{time.monotonic_ns()}"
    os.environ["RGT_TEST_SESSION"] = marker
    yield
    os.environ.pop("RGT_TEST_SESSION", None)
    me = psutil.Process()
    strays = {p.pid: p for p in me.children(recursive=True)}
    strays.update({p.pid: p for p in _descendants_and_strays(marker)})
    for p in strays.values():
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(list(strays.values()), timeout=5)


@pytest.fixture(scope="session")
def pyz(tmp_path_factory) -> str:
    """The agent archive, built once per session the way the controller builds it."""
    from rgt.controller import pyz as builder

    path, _ = builder.build(str(tmp_path_factory.mktemp("pyz")))
    return path


@pytest.fixture(scope="session")
def trainer_python() -> str:
    """The python of the trainer venv (pinned lightning, transformers, torch CPU) that install.sh builds.

    rgt's own venv never has these libraries: the laptop must verify checkpoints without them.
    """
    ok = os.access(TRAINER_VENV_PYTHON, os.X_OK)
    require_real(ok, f"no trainer venv at {TRAINER_VENV_PYTHON} (./install.sh builds it)")
    return TRAINER_VENV_PYTHON


@pytest.fixture
def env(tmp_path):
    """An isolated controller state dir, local box root and project dir."""
    from tests.helpers import Env

    return Env(tmp_path)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount real tmpfs filesystems (tiny disks, few inodes, read-only); all unmounted after the test.

    ``tmpfs(name, options)`` returns the mount point as a str; it skips (fails in CI) where mounting
    is not allowed.
    """
    import subprocess

    mounted = []

    def mount(name: str, options: str) -> str:
        where = tmp_path / name
        where.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, text=True)
        require_real(proc.returncode == 0, f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(str(where))
        return str(where)

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", where], capture_output=True)
        if os.path.ismount(where):
            subprocess.run(["umount", "-l", where], capture_output=True)
