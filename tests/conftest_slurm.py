"""Fixtures for tests on a real single-node Slurm cluster reached through a real sshd login host.

Use as a plugin: ``pytest_plugins = ["tests.conftest_slurm"]`` in the test module. `slurm_session` starts
munged, slurmctld and slurmd once (tests/slurmbox.py) and an sshd whose login sees SLURM_CONF; `slurm`
cancels every job and kills the login's processes after each test. `torch_py` is a python the ssh test
user can run that imports torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import require_real
from tests.slurmbox import SlurmBox, SlurmLogin, slurm_installed, torch_python
from tests.sshbox import sshd_available


@pytest.fixture(scope="session")
def slurm_session():
    """One cluster and one login sshd for the whole session; skipped (or failed in CI) when they cannot start."""
    require_real(slurm_installed(), "slurm-wlm and munge not installed (or not root)")
    require_real(sshd_available(), "openssh-server (sshd) not installed")
    box = SlurmBox()
    try:
        box.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        box.close()
        require_real(False, f"the single-node Slurm cluster did not start: {e}")
    login = SlurmLogin(str(box.conf))
    try:
        login.start()
        yield SimpleNamespace(box=box, login=login)
    finally:
        login.close()
        box.close()


@pytest.fixture
def slurm(slurm_session):
    """The cluster and its login, running; after the test every job is cancelled and the login's processes go."""
    if not slurm_session.login.running:
        slurm_session.login.start()
    yield slurm_session
    slurm_session.box.cancel_all()
    slurm_session.login.kill_box_processes()


@pytest.fixture(scope="session")
def torch_py():
    """A python the ssh test user can run that imports torch (tests/slurmbox.torch_python)."""
    from tests.sshbox import _ensure_test_user, _python_candidates

    user = _ensure_test_user()
    python = next((py for py in _python_candidates() if subprocess.run(
        ([] if user is None else ["runuser", "-u", user, "--"]) + [py, "-c", "import sys"],
        capture_output=True, check=False).returncode == 0), None)
    require_real(python is not None, "no python the ssh test user can run")
    base = Path(tempfile.mkdtemp(prefix="rgt-torchpy-", dir="/tmp"))
    os.chmod(base, 0o755)  # under /tmp, not pytest's 0700 dirs: the login user must reach it
    try:
        found = torch_python(base, user, python)
        require_real(found is not None, f"no python that {user or 'this user'} can run imports torch")
        yield found
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def state_dir():
    """A short private RGT_STATE_DIR (the ControlMaster socket must fit in it)."""
    path = tempfile.mkdtemp(prefix="rgt-st-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)
