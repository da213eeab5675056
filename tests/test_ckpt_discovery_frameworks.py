"""Checkpoints found where real trainers write them (trainer venv): verified, pulled, verified at home, down allowed.

Lightning's default folder, HF Trainer's output_dir plus its final model dir, a nanoGPT-style loop that
overwrites out/ckpt.pt, and a script saving into an absolute dir outside the run dir (local and over the
real sshd). Nothing here tells the trainer about rgt: no helper, no callback, no RGT_CKPT_DIR.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import wait_until

pytest_plugins = ["tests.conftest_ssh"]

TRAINERS = os.path.join(os.path.dirname(__file__), "trainers")

LIGHTNING = """\
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


torch.manual_seed(0)
data = TensorDataset(torch.randn(40, 8), torch.randn(40, 1))
every = pl.callbacks.ModelCheckpoint(every_n_train_steps=5)  # its default folder, its default top-k
trainer = pl.Trainer(max_steps=15, callbacks=[every], accelerator="cpu", enable_model_summary=False)
trainer.fit(Tiny(), DataLoader(data, batch_size=4))
"""

# nanoGPT's loop saves one dict to out/ckpt.pt again and again. Before the next save it waits until the
# agent has verified this version, so that every version is a checkpoint of its own (an event, no sleep).
NANOGPT = """\
import json, os, time
import torch

run = os.path.dirname(os.environ["RGT_CKPT_DIR"])


def verified_versions():
    try:
        with open(os.path.join(run, "ckpt_index.json")) as f:
            recs = json.load(f)["records"]
    except (OSError, ValueError, KeyError):
        return 0
    return next((r["versions"] for r in recs if r["key"] == "code/out/ckpt.pt" and r["state"] == "verified"), 0)


torch.manual_seed(0)
model = torch.nn.Linear(8, 8)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
os.makedirs("out", exist_ok=True)
for n, it in enumerate((100, 200, 300), 1):
    loss = model(torch.randn(4, 8)).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    print(f"iter {it}: loss {loss.item():.4f}, time 12.34ms, mfu 1.23%", flush=True)
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "model_args": {"n_layer": 1, "n_embd": 8},
            "iter_num": it, "best_val_loss": torch.tensor(1.0 / n), "config": {"batch_size": 4}}
    print(f"saving checkpoint to out", flush=True)
    torch.save(ckpt, os.path.join("out", "ckpt.pt"))
    deadline = time.time() + 600
    while verified_versions() < n and time.time() < deadline:
        time.sleep(0.2)
"""

ABSOLUTE = """\
import os, sys
import torch

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for step in (10, 20, 30):
    print(f"step={step} loss={1.0 / step:.4f}", flush=True)
    torch.save({"w": torch.full((64,), float(step))}, os.path.join(out, f"model_{step}.pt"))
"""


def _index(run_dir: Path) -> dict:
    return {r["key"]: r for r in json.loads((run_dir / "ckpt_index.json").read_text())["records"]}


def _up_local(env, run: str, trainer_python: str, *command: str, flags=()) -> str:
    res = env.rgt("up", "local", "--run", run, "--tick-s", "0.5", "--trainer-python", trainer_python, *flags, "--",
                  trainer_python, *command, check=True, timeout=300)
    return res.stdout + res.stderr


def _ended(env, run: str) -> None:
    wait_until(lambda: env.marker(run), 900, interval_s=0.5, what=f"{run} to end")
    assert env.marker(run) == "DONE", (env.run_dir(run) / "logs" / "trainer.log").read_text()[-3000:]


def _pull_verify_down(env, run: str) -> Path:
    dest = env.tmp / "pulls" / run
    res = env.rgt("pull", run, "--dest", str(dest), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert env.rgt("verify", str(dest), timeout=600).returncode == 0
    res = env.rgt("down", run, "--confirm", run, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return dest


def _same(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def test_lightning_default_model_checkpoint_in_its_default_folder(env, trainer_python):
    (env.project / "train.py").write_text(LIGHTNING)
    said = _up_local(env, "pl-ckpt", trainer_python, "train.py")
    run = env.run_dir("pl-ckpt")
    assert f"under {run}/code" in said  # rgt up says where checkpoints are looked for
    _ended(env, "pl-ckpt")
    key = "code/lightning_logs/version_0/checkpoints/epoch=1-step=15.ckpt"
    recs = _index(run)
    assert recs[key]["state"] == "verified" and recs[key]["step"] == 15, recs[key]
    # Lightning's own top-1 rotation removed the older ones; rgt itself removed nothing
    assert not [r for r in recs.values() if r.get("pruned_by_rgt")]
    assert env.status("pl-ckpt")["checkpoint"]["watch_dirs"] == [str(run / "ckpt"), str(run / "code")]
    assert "checkpoints looked for in" in env.rgt("status", "pl-ckpt", check=True).stdout
    dest = _pull_verify_down(env, "pl-ckpt")
    assert _same(dest / key, run / key)


def test_hf_trainer_checkpoints_in_output_dir_and_its_final_model_dir_come_home(env, trainer_python):
    shutil.copy(os.path.join(TRAINERS, "hf_tiny.py"), env.project / "hf_tiny.py")
    _up_local(env, "hf-ckpt", trainer_python, "hf_tiny.py", "--out", "out")
    _ended(env, "hf-ckpt")
    run = env.run_dir("hf-ckpt")
    recs = _index(run)
    for step in (6, 12):
        rec = recs[f"code/out/checkpoint-{step}"]
        assert (rec["is_dir"], rec["state"], rec["step"]) == (True, "verified", step), rec
    final = recs["code/out/final"]  # config.json beside the weights: the model folder is one checkpoint
    assert final["is_dir"] and final["state"] == "verified", final
    assert "code/out/final/config.json" in {f["path"] for f in final["files"]}
    dest = _pull_verify_down(env, "hf-ckpt")
    for rel in ("out/final/config.json", "out/final/model.safetensors", "out/checkpoint-12/trainer_state.json"):
        assert _same(dest / "code" / rel, run / "code" / rel), rel


def test_nanogpt_loop_overwriting_out_ckpt_pt_is_a_new_checkpoint_each_time(env, trainer_python):
    (env.project / "train.py").write_text(NANOGPT)
    (env.project / "pretrained").mkdir()
    subprocess.run([trainer_python, "-c", "import torch; torch.save({'w': torch.ones(2)}, 'pretrained/base.pt')"],
                   cwd=env.project, check=True, timeout=300)
    _up_local(env, "nano-ckpt", trainer_python, "train.py")
    _ended(env, "nano-ckpt")
    run = env.run_dir("nano-ckpt")
    recs = _index(run)
    rec = recs["code/out/ckpt.pt"]
    assert (rec["state"], rec["versions"], rec["step"]) == ("verified", 3, 300), rec
    assert "code/pretrained/base.pt" not in recs  # uploaded with the code: not a checkpoint of this run
    journal = env.rgt("events", "nano-ckpt", "--json", check=True).stdout
    steps = [json.loads(line).get("step") for line in journal.splitlines()
             if '"ckpt_verified"' in line and "code/out/ckpt.pt" in line]
    assert steps == [100, 200, 300], steps
    dest = _pull_verify_down(env, "nano-ckpt")
    assert _same(dest / "code/out/ckpt.pt", run / "code/out/ckpt.pt")
    assert not (dest / "code/pretrained/base.pt").exists()


def test_script_saving_into_an_absolute_dir_outside_the_run_dir_local(env, trainer_python):
    (env.project / "train.py").write_text(ABSOLUTE)
    out = env.tmp / "workspace" / "ckpt"
    said = _up_local(env, "abs-ckpt", trainer_python, "train.py", str(out), flags=("--ckpt-dir", str(out)))
    assert f"looked for in {out} ($RGT_CKPT_DIR)" in said
    _ended(env, "abs-ckpt")
    recs = _index(env.run_dir("abs-ckpt"))
    paths = sorted(r["path"] for r in recs.values() if r["state"] == "verified")
    want = [f"abs{out}/model_{s}.pt" for s in (10, 20, 30)]
    assert paths == want, recs
    dest = _pull_verify_down(env, "abs-ckpt")
    for s in (10, 20, 30):
        assert _same(dest / f"abs{out}/model_{s}.pt", out / f"model_{s}.pt")
    assert all((out / f"model_{s}.pt").exists() for s in (10, 20, 30))  # the user's folder: nothing pruned


def test_a_ckpt_dir_that_cannot_be_created_is_one_line_exit_2(env):
    for bad in ("/proc/rgt-cannot-make-this", "../elsewhere", "abs/x"):
        res = env.rgt("up", "local", "--run", "badckpt", "--ckpt-dir", bad, "--", "python3", "train.py")
        assert res.returncode == 2, res.stdout + res.stderr
        last = res.stderr.strip().splitlines()[-1]
        assert "--ckpt-dir" in last and "Traceback" not in res.stderr, res.stderr
        assert not (env.run_dir("badckpt") / "spec.json").exists()


@pytest.fixture
def ssh_trainer_python():
    """A python the box's login can run that imports torch: the system 3.11 over the trainer venv's packages."""
    site = Path(os.path.dirname(os.path.dirname(__file__)), ".venv-trainer", "lib", "python3.11", "site-packages")
    from tests.conftest import require_real

    require_real(site.is_dir() and os.access("/usr/bin/python3.11", os.X_OK),
                 "the trainer venv's site-packages and /usr/bin/python3.11")
    d = tempfile.mkdtemp(prefix="rgt-tpy-", dir="/tmp")
    os.chmod(d, 0o755)
    wrapper = Path(d, "python")
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec /usr/bin/python3.11 \"$@\"\n")
    wrapper.chmod(0o755)
    yield str(wrapper)
    shutil.rmtree(d, ignore_errors=True)


def test_script_saving_into_an_absolute_dir_over_real_ssh(rgt, sshbox, ssh_trainer_python, tmp_path):
    code = tempfile.mkdtemp(prefix="rgt-code-")
    try:
        Path(code, "train.py").write_text(ABSOLUTE)
        out = Path(sshbox.home, "workspace", "ckpt")
        res = rgt("up", sshbox.alias, "--run", "sshabs1", "--tick-s", "0.5", "--code", code, "--ckpt-dir", str(out),
                  "--trainer-python", ssh_trainer_python, "--", ssh_trainer_python, "train.py", str(out),
                  timeout_s=300)
        assert res.returncode == 0, res.stderr
        assert rgt("wait", "sshabs1", timeout_s=900).returncode == 0
        assert rgt("down", "sshabs1", "--confirm", "sshabs1", cwd=str(tmp_path)).returncode == 4
        res = rgt("pull", "sshabs1", cwd=str(tmp_path), timeout_s=600)
        assert res.returncode == 0, res.stderr
        dest = tmp_path / "rgt-pulls" / "sshabs1"
        for s in (10, 20, 30):
            assert _same(dest / f"abs{out}/model_{s}.pt", out / f"model_{s}.pt")
        manifest = json.loads((dest / "manifest.json").read_text())
        kinds = {e["path"]: e["kind"] for e in manifest["entries"]}
        assert kinds[f"abs{out}/model_30.pt"] == "checkpoint"
        assert rgt("verify", str(dest)).returncode == 0
        res = rgt("down", "sshabs1", "--confirm", "sshabs1", cwd=str(tmp_path))
        assert res.returncode == 0, res.stderr
        assert not (dest / "abs" / "PULL_VERIFIED.json").exists()
    finally:
        subprocess.run(["rm", "-rf", code], check=False)
