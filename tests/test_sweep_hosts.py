"""`rgt sweep` over two real SSH hosts (two sshd fixtures on two ports): cells, one table, pulls, a lost host."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import require_real, scaled, wait_until
from tests.slurmbox import TRAINER
from tests.sshbox import RGT, SSHBox, sshd_available

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.conftest_slurm"]


@pytest.fixture(scope="module")
def hosts():
    """Two boxes (own sshd, own $HOME, same login user), one ssh_config naming both, and a hosts file."""
    require_real(sshd_available(), "openssh-server (sshd) not installed")
    a, b = SSHBox(), SSHBox()
    folder = Path(tempfile.mkdtemp(prefix="rgt-sweep-", dir="/tmp"))
    try:
        a.start()
        b.start()
        config = folder / "ssh_config"
        config.write_text(a.ssh_config.read_text() + b.ssh_config.read_text())
        hosts_file = folder / "hosts"
        hosts_file.write_text(f"# the two boxes\n{a.alias}\n\n{b.alias}  # the second\n")
        yield SimpleNamespace(a=a, b=b, config=config, file=hosts_file, folder=folder)
    finally:
        for box in (a, b):
            box.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def rgt(hosts, tmp_path):
    """`rgt` with a private state dir and the two boxes' ssh_config, run from the project dir."""
    state = tempfile.mkdtemp(prefix="rgt-st-", dir="/tmp")
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text(TRAINER)
    env = dict(os.environ, RGT_STATE_DIR=state, RGT_SSH_CONFIG=str(hosts.config))
    env.pop("RGT_ROOT", None)

    def run(*args: str, timeout_s: float = 300.0):
        import subprocess

        return subprocess.run([RGT, *args], capture_output=True, text=True, timeout=scaled(timeout_s), env=env,
                              cwd=code, check=False)

    run.state, run.code = state, code
    yield run
    for box in (hosts.a, hosts.b):
        if not box.running:
            box.start()
        box.kill_box_processes()
    shutil.rmtree(state, ignore_errors=True)


def table(rgt, name: str) -> list:
    p = rgt("sweep", "status", name, "--json")
    assert p.returncode in (0, 3), p.stderr
    return json.loads(p.stdout)["cells"]


def test_a_2x2_sweep_over_two_hosts_ends_with_four_verified_pulls_and_one_table(hosts, rgt, torch_py, tmp_path):
    p = rgt("sweep", "--name", "sw", "--hosts", str(hosts.file), "--grid", "lr=0.1,0.2", "--grid", "bs=8,16",
            "--artifacts", "result.json", "--", torch_py, "train.py", "--lr", "{lr}", "--bs", "{bs}",
            "--steps", "6", "--sleep", "0.05", "--save-every", "3")
    assert p.returncode == 0, p.stderr
    cells = wait_until(lambda: (c := table(rgt, "sw")) and all(r["view"] == "succeeded" for r in c) and c, 600, 0.5,
                       "all four cells to succeed")
    assert [r["run_id"] for r in cells] == ["sw-1", "sw-2", "sw-3", "sw-4"]
    assert [r["host"] for r in cells] == [hosts.a.alias, hosts.b.alias, hosts.a.alias, hosts.b.alias]
    assert [r["params"] for r in cells] == [{"lr": "0.1", "bs": "8"}, {"lr": "0.1", "bs": "16"},
                                            {"lr": "0.2", "bs": "8"}, {"lr": "0.2", "bs": "16"}]
    assert all(r["step"] == 6 for r in cells)
    rec = json.loads((Path(rgt.state) / "runs" / "sw-2.json").read_text())
    assert rec["extra"]["sweep"] == {"name": "sw", "index": 2, "params": {"lr": "0.1", "bs": "16"}, "of": 4}

    dest = tmp_path / "pulls"
    pulled = rgt("pull", "--sweep", "sw", "--dest", str(dest))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    for i, (lr, bs) in enumerate([(0.1, 8), (0.1, 16), (0.2, 8), (0.2, 16)], 1):
        run = dest / f"sw-{i}"
        assert json.loads((run / "PULL_VERIFIED.json").read_text())["run_id"] == f"sw-{i}"
        result = json.loads((run / "code" / "result.json").read_text())
        assert (result["lr"], result["bs"]) == (lr, bs)
    assert "all 4 cells pulled and verified" in pulled.stderr
    rows = [x for x in pulled.stdout.splitlines() if x.split()[:2] and x.split()[1].startswith("sw-")]
    assert len(rows) == 4 and all("succeeded" in x and x.rstrip().endswith(" verified") for x in rows)
    assert "lr=0.1 bs=16" in rows[1]
    assert pulled.stdout.count("CELL") == 1 and "4 cells: 4 succeeded" in pulled.stdout


def test_a_lost_host_shows_its_cells_unreachable_and_reassign_resumes_them_from_the_pulled_checkpoint(
        hosts, rgt, torch_py, tmp_path):
    p = rgt("sweep", "--name", "lost", "--hosts", str(hosts.file), "--grid", "lr=0.1,0.2", "--",
            torch_py, "train.py", "--lr", "{lr}", "--steps", "3000", "--sleep", "0.1", "--save-every", "20")
    # 3000 steps: the cells still run when the test looks, however slow the machine (teardown ends them)
    assert p.returncode == 0, p.stderr

    def verified_ckpt():
        c = table(rgt, "lost")
        return c[1]["view"] == "running" and (c[1]["step"] or 0) >= 25 and c

    wait_until(verified_ckpt, 120, 0.5, "cell 2 to train past its first checkpoint")
    box_run = hosts.b.home / ".rgt" / "runs" / "lost-2"
    wait_until(lambda: (json.loads((box_run / "status.json").read_text())["checkpoint"].get("last_step") or 0) >= 20,
               120, 0.3, "a verified checkpoint on host b")
    dest = tmp_path / "pulls"
    partial = rgt("pull", "--sweep", "lost", "--dest", str(dest))
    assert partial.returncode == 0, partial.stdout + partial.stderr
    assert "verified (partial" not in partial.stderr  # the table's PULL column says it; nothing failed

    hosts.b.stop()  # host b goes dark; what it runs keeps running, out of reach
    cells = table(rgt, "lost")
    assert cells[1]["view"] == "unreachable" and cells[1]["last_state"] == "running"
    assert cells[0]["view"] == "running"
    human = rgt("sweep", "status", "lost")
    assert human.returncode == 3
    assert "unreachable (running)" in human.stdout and "failed" not in human.stdout

    pulled_steps = sorted(int(n.split("_")[1].split(".")[0]) for n in os.listdir(dest / "lost-2" / "ckpt")
                          if n.startswith("step_"))
    moved = rgt("sweep", "status", "lost", "--reassign")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert f"rerun as lost-2-r1 on {hosts.a.alias}, resuming from ckpt/step_{pulled_steps[-1]}.pt" in moved.stderr
    new_run = hosts.a.home / ".rgt" / "runs" / "lost-2-r1"
    text = wait_until(lambda: (new_run / "logs" / "trainer.log").exists()
                      and "resumed from step=" in (new_run / "logs" / "trainer.log").read_text()
                      and (new_run / "logs" / "trainer.log").read_text(), 120, 0.2, "the rerun to resume")
    assert int(text.split("resumed from step=")[1].split()[0]) == pulled_steps[-1]
    cells = table(rgt, "lost")
    assert cells[1]["run_id"] == "lost-2-r1" and cells[1]["host"] == hosts.a.alias
    assert cells[1]["replaces"] == "lost-2" and cells[1]["view"] in ("starting", "running")
    old = json.loads((Path(rgt.state) / "runs" / "lost-2.json").read_text())
    assert old["extra"]["sweep"]["replaced_by"] == "lost-2-r1"
