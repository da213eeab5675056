"""Fixtures for tests over a real sshd: one sshd per session, a private rgt state dir and `rgt` runner per test.

Use as a plugin (`pytest_plugins = ["tests.conftest_ssh"]` in tests/conftest.py) or import the
fixtures into a test module: `from tests.conftest_ssh import rgt, rgt_state, sshbox, sshbox_session  # noqa: F401`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Callable

import pytest

from tests.conftest import require_real, scaled
from tests.sshbox import RGT, SSHBox, sshd_available


@pytest.fixture(scope="session")
def sshbox_session():
    """One real sshd on 127.0.0.1 for the whole session."""
    require_real(sshd_available(), "openssh-server (sshd) not installed")
    box = SSHBox()
    try:
        box.start()
        yield box
    finally:
        box.close()


@pytest.fixture
def sshbox(sshbox_session):
    """The session's sshd, running; the box's processes are killed after the test (tracked by marker)."""
    if not sshbox_session.running:
        sshbox_session.start()
    yield sshbox_session
    sshbox_session.kill_box_processes()
    if not sshbox_session.running:
        sshbox_session.start()


@pytest.fixture
def rgt_state():
    """A short private RGT_STATE_DIR (short, so the ControlMaster socket fits in it)."""
    path = tempfile.mkdtemp(prefix="rgt-st-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def rgt(sshbox, rgt_state) -> Callable[..., subprocess.CompletedProcess]:
    """A runner for the `rgt` console script against the box, e.g. ``rgt("status", "--json")``."""

    def run(*args: str, timeout_s: float = 120.0, cwd: str = None) -> subprocess.CompletedProcess:
        return subprocess.run([RGT, *args], capture_output=True, text=True, timeout=scaled(timeout_s),
                              env=sshbox.env(rgt_state), cwd=cwd or os.getcwd(), check=False)

    run.state = rgt_state
    return run
