"""`rgt up --profile slurm` on a real single-node Slurm cluster, through a real sshd login host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import scaled, wait_until
from tests.helpers import AGENT_DRAIN_S
from tests.slurmbox import TRAINER, rgt_runner

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.conftest_slurm"]


def project(tmp_path: Path, slurm_table: str = "") -> Path:
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text(TRAINER)
    if slurm_table:
        (code / "rgt.toml").write_text("[slurm]\n" + slurm_table)
    return code


def run_dir(slurm, run_id: str) -> Path:
    return slurm.login.home / ".rgt" / "runs" / run_id


def status(slurm, run_id: str) -> dict:
    try:
        return json.loads((run_dir(slurm, run_id) / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def job_of(state: str, run_id: str) -> str:
    return json.loads((Path(state) / "runs" / f"{run_id}.json").read_text())["extra"]["slurm"]["job_id"]


def log(slurm, run_id: str) -> str:
    try:
        return (run_dir(slurm, run_id) / "logs" / "trainer.log").read_text()
    except OSError:
        return ""


def test_requeue_mid_run_resumes_from_the_checkpoint_and_stop_cancels_the_job(slurm, torch_py, state_dir, tmp_path):
    code = project(tmp_path, "gpus = 1\n")
    rgt = rgt_runner(slurm.login, state_dir)
    up = rgt("up", "--profile", "slurm", slurm.login.alias, "--run", "slurm-a", "--code", str(code), "--",
             torch_py, "train.py", "--steps", "5000", "--sleep", "0.1", "--save-every", "20")
    assert up.returncode == 0, up.stdout + up.stderr
    job = job_of(state_dir, "slurm-a")
    assert f"submitted slurm job {job}" in up.stderr

    shown = rgt("status", "slurm-a", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["scheduler"]["job_id"] == job and data["scheduler"]["state"] == "RUNNING"
    assert data["state"] in ("starting", "running") and data["run_id"] == "slurm-a"
    human = rgt("status", "slurm-a")
    assert f"slurm job {job}: RUNNING" in human.stdout and "slurm-a on" in human.stdout
    gpu = wait_until(lambda: "CUDA_VISIBLE_DEVICES=" in log(slurm, "slurm-a") and log(slurm, "slurm-a"), 120, 0.1)
    assert "CUDA_VISIBLE_DEVICES=0" in gpu or "CUDA_VISIBLE_DEVICES=1" in gpu  # Slurm's fake gres, one GPU

    wait_until(lambda: ((status(slurm, "slurm-a").get("checkpoint") or {}).get("last_step") or 0) >= 20, 120, 0.2,
               "a verified checkpoint at step 20 or later")
    before = status(slurm, "slurm-a")["progress"]["step"]
    assert slurm.box.run("scontrol", "requeue", job).returncode == 0

    def resumed():
        # The status (helper reports) and the trainer log (the agent copies stdout) race: wait for both.
        st = status(slurm, "slurm-a")
        return (st.get("incarnation", "").endswith(f"slurm-{job}.1") and st.get("state") == "running"
                and st["trainer"]["attempt"] >= 2 and (st["progress"].get("step") or 0) > before
                and "resumed from step=" in log(slurm, "slurm-a") and st)

    st = wait_until(resumed, AGENT_DRAIN_S + 120, 0.2, "the requeued job to resume the run past its old step")
    assert st["trainer"]["last_failure"]["class"] == "preempted"
    assert st["trainer"]["restarts"] == 0  # a preemption costs no restart budget
    text = log(slurm, "slurm-a")
    assert "SIGTERM: saved step=" in text  # Slurm signals only the batch shell: the agent passed it on
    ending = [r for r in journal(slurm, "slurm-a") if r.get("kind") == "job_ending"]
    assert ending and ending[0]["recorded"] is True  # the waiter wrote exit.json before Slurm's SIGKILL
    resumed_at = int(text.split("resumed from step=")[1].split()[0])
    assert resumed_at >= 20
    again = rgt("status", "slurm-a")
    assert "requeued 1 time(s)" in again.stdout

    stop = rgt("stop", "slurm-a", "--wait-s", str(scaled(AGENT_DRAIN_S + 60)), timeout_s=AGENT_DRAIN_S + 180)
    assert stop.returncode == 0, stop.stderr
    assert f"run slurm-a ended STOPPED; slurm job {job} cancelled" in stop.stderr
    assert (run_dir(slurm, "slurm-a") / "STOPPED").exists()
    wait_until(lambda: slurm.box.job_state(job) in ("CANCELLED", "COMPLETED"), 120, 0.2, "the job to end")

    # `rgt resume` submits a new job for the same run dir; its agent reopens the STOPPED run and resumes.
    again = rgt("resume", "slurm-a")
    assert again.returncode == 0, again.stderr
    second = job_of(state_dir, "slurm-a")
    assert second != job and f"slurm job {second} submitted (running)" in again.stderr
    wait_until(lambda: log(slurm, "slurm-a").count("resumed from step=") == 2, 180, 0.2, "a second resume")
    assert rgt("stop", "slurm-a").returncode == 0


def journal(slurm, run_id: str) -> list:
    from rgt.shared.journal import read_journal

    return read_journal(str(run_dir(slurm, run_id) / "events.msgpack")).records


def test_a_pending_job_without_status_is_not_an_error_and_stop_cancels_it(slurm, torch_py, state_dir, tmp_path):
    # Both fake GPUs taken: our one-GPU job has to wait (Reason=Resources).
    blocker = slurm.box.run("sbatch", "--parsable", "--gres=gpu:2", "-o", "/dev/null", "--wrap", "sleep 600")
    assert blocker.returncode == 0, blocker.stderr
    wait_until(lambda: slurm.box.job_state(blocker.stdout.strip()) == "RUNNING", 120, 0.2, "the blocker job to run")
    code = project(tmp_path, "gpus = 1\n")
    rgt = rgt_runner(slurm.login, state_dir)
    up = rgt("up", "--profile", "slurm", slurm.login.alias, "--run", "slurm-p", "--code", str(code), "--",
             torch_py, "train.py", env={"RGT_SLURM_PENDING_GRACE_S": "1"})
    assert up.returncode == 0, up.stderr
    job = job_of(state_dir, "slurm-p")
    assert f"slurm job {job} is PENDING" in up.stderr

    shown = rgt("status", "slurm-p")
    assert shown.returncode == 0, shown.stderr
    assert "no status.json yet" in shown.stdout and f"slurm job {job}: PENDING" in shown.stdout
    assert "has not started yet" in shown.stdout
    data = json.loads(rgt("status", "slurm-p", "--json").stdout)
    assert data["controller"]["view"] == "no-status" and data["scheduler"]["state"] == "PENDING"
    assert data["scheduler"]["accounting"] == "disabled"  # no slurmdbd here: sacct says so, and that is fine

    stop = rgt("stop", "slurm-p")
    assert stop.returncode == 0, stop.stderr
    assert f"slurm job {job} was PENDING: cancelled before it ran" in stop.stderr
    assert slurm.box.job_state(job) == "CANCELLED"
    assert json.loads((run_dir(slurm, "slurm-p") / "STOPPED").read_text())["state"] == "stopped"


def test_usr1_before_the_walltime_reaches_the_trainer_as_a_save_request(slurm, torch_py, state_dir, tmp_path):
    # A two-minute walltime: the lead (120 s, nothing measured yet) is due at once, so USR1 comes early,
    # and the trainer still has two minutes to start on a busy machine and save before Slurm ends the job.
    code = project(tmp_path, 'time = "2"\n')
    rgt = rgt_runner(slurm.login, state_dir)
    up = rgt("up", "--profile", "slurm", slurm.login.alias, "--run", "slurm-u", "--code", str(code), "--",
             torch_py, "train.py", "--steps", "5000", "--sleep", "0.1", "--save-every", "1000")
    assert up.returncode == 0, up.stderr
    sbatch = json.loads((Path(state_dir) / "runs" / "slurm-u.json").read_text())["extra"]["slurm"]["sbatch"]
    assert "--signal=B:USR1@120" in sbatch and "--time=2" in sbatch and "--requeue" in sbatch

    text = wait_until(lambda: "SIGUSR1: saved step=" in log(slurm, "slurm-u") and log(slurm, "slurm-u"), 120, 0.2,
                      "the trainer to save on the agent's SIGUSR1")
    step = int(text.split("SIGUSR1: saved step=")[1].split()[0])
    assert (run_dir(slurm, "slurm-u") / "ckpt" / f"step_{step}.pt").exists()
    asked = [r for r in journal(slurm, "slurm-u") if r.get("kind") == "save_request"]
    assert asked and asked[0]["forwarded"] is True
    assert status(slurm, "slurm-u")["state"] == "running"  # a save request is not a stop
    assert rgt("stop", "slurm-u").returncode == 0
