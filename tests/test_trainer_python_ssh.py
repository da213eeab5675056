"""`rgt up` over a real sshd asks the box (not the laptop) whether the trainer's python has torch."""

import subprocess
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["tests.conftest_ssh"]


@pytest.fixture
def code_dir():
    path = tempfile.mkdtemp(prefix="rgt-code-")
    Path(path, "train.py").write_text("print('step=1 loss=0.5', flush=True)\n")
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


def test_up_over_ssh_warns_when_the_boxs_python_cannot_import_torch(rgt, sshbox, code_dir):
    probe = subprocess.run(["ssh", "-F", str(sshbox.ssh_config), sshbox.alias, "python3", "-c", "'import torch'"],
                           capture_output=True, timeout=120)
    has_torch = probe.returncode == 0
    res = rgt("up", sshbox.alias, "--run", "tp1", "--tick-s", "0.5", "--code", code_dir, "--", "env", "A=1",
              "sh", "-c", "python3 train.py")
    assert res.returncode == 0, res.stderr
    warned = [x for x in res.stderr.splitlines() if x.startswith("warning:") and "torch" in x]
    assert bool(warned) == (not has_torch), res.stderr
    if warned:
        assert "--trainer-python" in warned[0] and "python3" in warned[0]
    res = rgt("up", sshbox.alias, "--run", "tp2", "--code", code_dir, "--trainer-python", "/no/such/python",
              "--", "python3", "train.py")
    assert res.returncode == 2 and "--trainer-python /no/such/python is not on" in res.stderr
