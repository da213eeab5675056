"""The Slurm backend's pieces without a cluster: options, the signal lead, the job script, the scheduler's view."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from rgt.agent import procs
from rgt.controller import slurm, slurmview
from rgt.controller.registry import RunRecord
from rgt.shared.errors import BadInput
from tests.conftest import wait_until

SQUEUE_RUNNING = "42|RUNNING|None|vm|1:05|2:00\n@@rgt-rc 0\n"
SCONTROL_RUNNING = ("JobId=42 JobName=rgt-r1 UserId=u(1001) JobState=RUNNING Reason=None Requeue=1 Restarts=1 "
                    "ExitCode=0:0 RunTime=00:01:05 TimeLimit=00:02:00 NodeList=vm TRES=cpu=1,mem=2000M,node=1\n"
                    "@@rgt-rc 0\n")
SACCT_DISABLED = "Slurm accounting storage is disabled\n@@rgt-rc 1\n"


def test_flags_win_over_rgt_toml_and_what_sbatch_would_misread_is_refused():
    project = {"slurm": {"time": "4:00:00", "gpus": 2, "partition": "gpu", "sbatch_args": ["--mem=8G"]},
               "_path": "/p/rgt.toml"}
    opts = slurm.options_from(project, time="30", gpus=None)
    assert (opts.time, opts.gpus, opts.partition, opts.sbatch_args) == ("30", 2, "gpu", ["--mem=8G"])
    with pytest.raises(BadInput, match="slurm.walltime: unknown key"):
        slurm.options_from({"slurm": {"walltime": "1"}})
    with pytest.raises(BadInput, match="bad --time"):
        slurm.options_from({}, time="an hour")
    with pytest.raises(BadInput, match="only --options"):
        slurm.options_from({"slurm": {"sbatch_args": ["evil.sh"]}})
    with pytest.raises(BadInput, match="bad slurm partition"):
        slurm.options_from({"slurm": {"partition": "gpu; rm -rf ~"}})


def test_the_usr1_lead_is_two_saves_plus_a_minute_and_120s_when_nothing_was_measured():
    assert slurm.signal_lead_s(None) == 120
    assert slurm.signal_lead_s(float("nan")) == 120
    assert slurm.signal_lead_s(30.0) == 120
    assert slurm.signal_lead_s(0.4) == 61
    assert slurm.signal_lead_s(100.0) == 260
    assert slurm.signal_lead_s(1e6) == 3600


def test_the_job_script_execs_the_agent_with_resume_and_quotes_every_path(tmp_path):
    run_dir = "/home/a b/.rgt/runs/r1"
    text = slurm.batch_script("r1", run_dir, "/opt/py 3/bin/python3", "/home/a b/.rgt/agent/abc.pyz").decode()
    assert text.startswith("#!/bin/sh\n")
    assert "exec '/opt/py 3/bin/python3' -I '/home/a b/.rgt/agent/abc.pyz' daemon '/home/a b/.rgt/runs/r1' --resume" \
        in text
    assert "RGT_JOB_SCHEDULER=slurm; export RGT_JOB_SCHEDULER" in text
    script = tmp_path / "job.sh"
    script.write_text(text)
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0


def test_sbatch_asks_for_requeue_usr1_before_the_walltime_gres_and_output_in_the_run_dir():
    opts = slurm.SlurmOptions(time="90", gpus=2, account="lab", sbatch_args=["--mem=8G"])
    argv = slurm.sbatch_argv("r1", "/h/.rgt/runs/r1", "/h/.rgt/runs/r1/slurm-job.sh", opts, 150)
    assert argv[:2] == ["sbatch", "--parsable"] and argv[-1] == "/h/.rgt/runs/r1/slurm-job.sh"
    for arg in ("--requeue", "--signal=B:USR1@150", "--time=90", "--gres=gpu:2", "--account=lab", "--mem=8G",
                "--output=/h/.rgt/runs/r1/logs/slurm-%j.out", "--open-mode=append", "--job-name=rgt-r1"):
        assert arg in argv
    odd = slurm.sbatch_argv("r1", "/h/100%/r1", "/s", slurm.SlurmOptions(), 120)
    assert "--output=/h/100%%/r1/logs/slurm-%j.out" in odd  # a literal % is not a Slurm pattern


def test_the_view_merges_squeue_and_scontrol_and_says_accounting_is_disabled():
    view = slurmview.parse_view("42", SQUEUE_RUNNING + SCONTROL_RUNNING + SACCT_DISABLED)
    assert view["state"] == "RUNNING" and view["node"] == "vm" and view["reason"] is None
    assert (view["restarts"], view["exit_code"], view["elapsed"], view["time_limit"]) == (1, "0:0", "1:05", "2:00")
    assert view["accounting"] == "disabled" and view["source"] == "squeue" and view["error"] is None


def test_a_job_slurmctld_forgot_is_read_from_sacct_and_missing_commands_are_named():
    gone = "slurm_load_jobs error: Invalid job id specified\n@@rgt-rc 1\n" * 2
    view = slurmview.parse_view("42", gone + "42|TIMEOUT|0:15|02:00:10|vm\n@@rgt-rc 0\n")
    assert (view["state"], view["exit_code"], view["source"], view["accounting"]) == ("TIMEOUT", "0:15", "sacct",
                                                                                      "enabled")
    missing = "sh: 1: squeue: not found\n@@rgt-rc 127\n" + "sh: scontrol: not found\n@@rgt-rc 127\n" * 2
    assert "no Slurm commands" in slurmview.parse_view("42", missing)["error"]


def test_status_lines_explain_a_pending_job_and_a_requeued_one():
    rec = RunRecord(run_id="r1", host="login", root="/h/.rgt")
    pending = {"job_id": "42", "state": "PENDING", "reason": "Resources", "accounting": "disabled"}
    lines = slurmview.status_lines(rec, "no-status", pending)
    assert lines[0] == "  slurm job 42: PENDING (Resources)" and "has not started yet" in lines[1]
    requeued = dict(pending, reason="BeginTime", restarts=1)
    lines = slurmview.status_lines(rec, "stale", requeued)
    assert "requeued 1 time(s)" in lines[0] and "resumes the run from its newest verified checkpoint" in lines[1]
    over = {"job_id": "42", "state": "TIMEOUT"}
    assert "`rgt resume r1` submits it again" in slurmview.status_lines(rec, "stale", over)[1]


def test_a_requeued_slurm_job_is_a_new_incarnation_on_the_same_node():
    plain = procs.incarnation(env={})
    first = procs.incarnation(env={"SLURM_JOB_ID": "42"})
    again = procs.incarnation(env={"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "1"})
    assert first.startswith(plain) and first.endswith(":slurm-42.0") and again.endswith(":slurm-42.1")
    assert len({plain, first, again}) == 3
    assert procs.incarnation(env={"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "0"}) == first


def test_catches_tells_a_process_with_a_usr1_handler_from_one_that_would_die_of_it():
    code = "import signal, sys, time; signal.signal(signal.SIGUSR1, lambda *a: None); print('ready', flush=True); " \
           "time.sleep(60)"
    handler = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    plain = subprocess.Popen(["sleep", "60"])
    try:
        assert handler.stdout.readline().strip() == "ready"
        assert procs.catches(handler.pid, signal.SIGUSR1) is True
        assert procs.catches(plain.pid, signal.SIGUSR1) is False
        assert procs.catches(plain.pid, signal.SIGCHLD) is False
    finally:
        handler.kill()
        plain.kill()
        handler.wait()
        plain.wait()
    wait_until(lambda: procs.catches(plain.pid, signal.SIGUSR1) is None, 120, what="the process to be gone")
