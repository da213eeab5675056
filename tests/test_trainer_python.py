"""The trainer's python is found through wrappers, and `rgt up` says when it cannot import torch."""

from __future__ import annotations

import os

import pytest

from rgt.agent.trainerpy import find, probe
from tests.conftest import TRAINER_VENV_PYTHON

VENV_BIN = os.path.dirname(TRAINER_VENV_PYTHON)


@pytest.fixture
def venv_bin(trainer_python):
    return VENV_BIN


@pytest.mark.parametrize("argv", [
    ["python", "train.py"],
    ["python", "-m", "pkg.train", "--lr", "1"],
    ["env", "OMP_NUM_THREADS=1", "-u", "HTTP_PROXY", "python", "-u", "train.py"],
    ["env", "-S", "python -u", "train.py"],
    ["sh", "-c", "cd sub && OMP_NUM_THREADS=2 python train.py --x 1"],
    ["bash", "-lc", "echo start; export A=1; exec python train.py"],
    ["nohup", "nice", "-n", "5", "python", "train.py"],
    ["bash", "-e", "-c", "set -x\ncd src\nif true; then python -u train.py | tee log.txt; fi"],
    # console scripts: their shebang names the python (the trainer venv's real torchrun and accelerate)
    ["torchrun", "--nproc_per_node=1", "train.py"],
    ["accelerate", "launch", "train.py"],
    ["sh", "-c", "pip install -q -r requirements.txt && torchrun --standalone train.py"],
])
def test_wrappers_lead_to_the_trainer_venv_python(venv_bin, argv):
    found = find(argv, path=venv_bin)
    assert found is not None and os.path.samefile(found, TRAINER_VENV_PYTHON), found


def test_versioned_and_absolute_pythons(venv_bin, tmp_path):
    (tmp_path / "python3.11").symlink_to(TRAINER_VENV_PYTHON)
    assert find(["python3.11", "t.py"], path=str(tmp_path)) == str(tmp_path / "python3.11")
    assert find([TRAINER_VENV_PYTHON, "t.py"], path="/nonexistent") == TRAINER_VENV_PYTHON
    assert find(["bash", "-c", f"{TRAINER_VENV_PYTHON} -m x"], path="/nonexistent") == TRAINER_VENV_PYTHON


def test_an_activated_venv_in_a_shell_line_and_a_script_file(venv_bin, tmp_path):
    venv = os.path.dirname(VENV_BIN)
    line = f"source {venv}/bin/activate && python train.py"
    assert os.path.samefile(find(["bash", "-c", line], path="/usr/bin:/bin"), TRAINER_VENV_PYTHON)
    (tmp_path / "run.sh").write_text(f"#!/bin/sh\nset -e\ncd code\n{venv}/bin/python train.py \"$@\"\n")
    assert find(["bash", "run.sh"], path="/usr/bin", cwd=str(tmp_path)) == f"{venv}/bin/python"


def test_commands_without_python_give_none():
    assert find(["./train.bin", "--x"], path="/nonexistent") is None
    assert find(["sh", "-c", "echo hi"], path="/nonexistent") is None


def test_the_probe_says_which_python_and_whether_it_has_torch(venv_bin, tmp_path):
    spec = {"command": ["env", "A=1", "python", "t.py"], "env": {"PATH": venv_bin}, "python": "/usr/bin/python3"}
    got = probe(spec, str(tmp_path))
    assert (got["how"], got["exists"], got["torch"]) == ("command", True, True)
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(os.path.realpath("/usr/bin/python3"))  # a python without torch
    got = probe(dict(spec, env={"PATH": str(bare)}), str(tmp_path))
    assert (got["exists"], got["torch"]) == (True, False)
    got = probe(dict(spec, extra={"verify_python": "/no/such/python"}), str(tmp_path))
    assert (got["how"], got["exists"]) == ("explicit", False)


def test_rgt_up_warns_naming_trainer_python_when_torch_is_missing(env, tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(os.path.realpath("/usr/bin/python3"))
    p = env.rgt("up", "local", "--run", "notorch", "--tick-s", "0.5", "--", "env", "X=1", str(bare / "python"),
                "-c", "print(1)")
    assert p.returncode == 0, p.stderr
    warning = [x for x in p.stderr.splitlines() if x.startswith("warning:") and "torch" in x]
    assert warning and "--trainer-python" in warning[0] and str(bare / "python") in warning[0]
    assert "Traceback" not in p.stderr


def test_rgt_up_refuses_a_trainer_python_that_is_not_there(env):
    p = env.rgt("up", "local", "--run", "nopy", "--trainer-python", "/no/such/python", "--", "python3", "train.py")
    assert p.returncode == 2
    errors = [x for x in p.stderr.splitlines() if x.startswith("rgt:")]  # after the platform briefing
    assert len(errors) == 1 and "--trainer-python /no/such/python" in errors[0] and "Traceback" not in p.stderr
    assert not env.run_dir("nopy").exists()
