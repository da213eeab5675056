"""Deterministic launch errors are config_error and never retried; `rgt up` refuses a script that is not there."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rgt.agent.classify import Evidence, classify
from rgt.shared.journal import read_journal
from tests.conftest import scaled
from tests.helpers import agent_argv, make_run_dir


def _agent_run(tmp_path, pyz, run_id, command, code=None):
    run = make_run_dir(tmp_path, run_id, command, code=code or {}, tick_s=0.3, max_restarts=3, backoff_s=0.1,
                       start_grace_s=0)
    p = subprocess.run([*agent_argv(pyz), "daemon", str(run)], capture_output=True, text=True, timeout=scaled(300))
    assert p.returncode == 0, p.stderr
    failed = json.loads((run / "FAILED").read_text())
    launches = [r for r in read_journal(str(run / "events.msgpack")).records if r.get("kind") == "launch"]
    return failed, launches


@pytest.mark.parametrize(("command", "code", "expect"), [
    (["bash", "-c", "no-such-command-rgt-test --lr 3e-4"], None, "exit code 127 (command not found)"),
    (["/no/such/python3", "train.py"], None, "exit code 127"),
    ([sys.executable, "train.py"], {"other.py": "print(1)\n"}, "can't open file"),
    ([sys.executable, "train.py"], {"train.py": "import no_such_module_rgt_test\n"}, "ModuleNotFoundError"),
    ([sys.executable, "train.py"], {"train.py": "from os import no_such_name\n"}, "ImportError"),
    ([sys.executable, "train.py"], {"train.py": "def f(:\n"}, "SyntaxError"),
])
def test_a_launch_that_fails_the_same_way_every_time_is_config_error_with_zero_restarts(
        tmp_path, pyz, command, code, expect):
    failed, launches = _agent_run(tmp_path, pyz, "cfg", command, code)
    assert failed["failure"]["class"] == "config_error", failed
    assert expect in failed["failure"]["evidence"], failed["failure"]["evidence"]
    assert failed["restarts"] == 0 and len(launches) == 1
    assert "not retried" in failed["reason"]


def _ev(tail, exit_code=1, runtime_s=500.0, attempt=1):
    return Evidence(exit_code=exit_code, signal=None, runtime_s=runtime_s, tail=tail, start_grace_s=60.0,
                    attempt=attempt)


def test_an_import_error_a_library_only_warned_about_is_not_the_error_that_ended_the_run():
    tail = ["ImportError: apex not found, using native AMP", "step=10 loss=0.4", "Traceback (most recent call last):",
            '  File "train.py", line 9, in <module>', "RuntimeError: CUDA error: an illegal memory access"]
    assert classify(_ev(tail)).failure.value == "crashed"


def test_an_import_error_on_a_later_attempt_after_the_grace_is_retried_as_a_crash():
    tail = ["Traceback (most recent call last):", "ModuleNotFoundError: No module named 'flaky_nfs_module'"]
    assert classify(_ev(tail, attempt=1)).failure.value == "config_error"
    assert classify(_ev(tail, attempt=2)).failure.value == "crashed"


def test_up_refuses_a_script_that_is_not_in_the_synced_code_with_exit_2(env):
    p = env.rgt("up", "local", "--run", "nofile", "--", "python3", "tran.py")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "tran.py" in p.stderr and "Traceback" not in p.stderr
    assert not (env.run_dir("nofile") / "spec.json").exists(), "nothing was launched"


def test_up_refuses_a_missing_local_module_but_not_an_installed_one(env):
    (env.project / "pkg").mkdir()
    (env.project / "pkg" / "__init__.py").write_text("")
    p = env.rgt("up", "local", "--run", "nomod", "--", "python3", "-m", "pkg.trian")
    assert p.returncode == 2 and "pkg.trian" in p.stderr, p.stdout + p.stderr
    (env.project / "pkg" / "train.py").write_text("print('step=1 loss=0.5')\n")
    ok = env.rgt("up", "local", "--run", "okmod", "--tick-s", "0.3", "--", "python3", "-u", "-m", "pkg.train")
    assert ok.returncode == 0, ok.stderr
    installed = env.rgt("up", "local", "--run", "inst", "--tick-s", "0.3", "--", "python3", "-m", "json.tool",
                        "--help")
    assert installed.returncode == 0, installed.stderr
