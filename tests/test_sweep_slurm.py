"""`rgt sweep --slurm LOGIN`: every cell is its own Slurm job on the real single-node cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.slurmbox import TRAINER, rgt_runner

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.conftest_slurm"]


def test_a_sweep_on_slurm_runs_one_job_per_cell_and_pulls_them_all(slurm, torch_py, state_dir, tmp_path):
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text(TRAINER)
    rgt = rgt_runner(slurm.login, state_dir)
    p = rgt("sweep", "--name", "js", "--slurm", slurm.login.alias, "--gpus", "1", "--time", "10",
            "--grid", "lr=0.1,0.2", "--artifacts", "result.json", "--",
            torch_py, "train.py", "--lr", "{lr}", "--steps", "6", "--sleep", "0.05", "--save-every", "3", cwd=str(code))
    assert p.returncode == 0, p.stderr
    jobs = []
    for run_id in ("js-1", "js-2"):
        rec = json.loads((Path(state_dir) / "runs" / f"{run_id}.json").read_text())
        assert rec["profile"] == "slurm" and rec["extra"]["sweep"]["name"] == "js"
        job = rec["extra"]["slurm"]
        assert "--gres=gpu:1" in job["sbatch"] and "--time=10" in job["sbatch"]
        jobs.append(job["job_id"])
    assert len(set(jobs)) == 2

    def done():
        out = rgt("sweep", "status", "js", "--json")
        cells = json.loads(out.stdout)["cells"]
        return all(c["view"] == "succeeded" for c in cells) and cells

    cells = wait_until(done, 600, 0.5, "both cells' jobs to finish the run")  # checkpoints verified first
    assert [c["host"] for c in cells] == [slurm.login.alias] * 2
    pulled = rgt("pull", "--sweep", "js", "--dest", str(tmp_path / "pulls"), cwd=str(code))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    for i, lr in ((1, 0.1), (2, 0.2)):
        assert json.loads((tmp_path / "pulls" / f"js-{i}" / "code" / "result.json").read_text())["lr"] == lr
    wait_until(lambda: all(slurm.box.job_state(j) == "COMPLETED" for j in jobs), 120, 0.2, "both jobs to complete")
