"""Live progress from real Lightning and Hugging Face runs under `rgt up local` (trainer venv, tiny models)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from tests.conftest import wait_until

TRAINERS = os.path.join(os.path.dirname(__file__), "trainers")


def _start(env, trainer_python, run, script, *args):
    shutil.copy(os.path.join(TRAINERS, script), env.project / script)
    env.rgt("up", "local", "--run", run, "--tick-s", "0.5", "--", trainer_python, script, *args, "--hold", "release",
            check=True, timeout=300)


def _live(env, run, want):
    """Wait for status.json to show ``want`` while the trainer holds, then read `rgt status --json` and text."""
    def shown():
        st = env.status(run)
        return st if st.get("state") == "running" and want(st.get("progress") or {}) else None

    wait_until(shown, 300, interval_s=0.2, what=f"live progress of {run}")
    data = json.loads(env.rgt("status", run, "--json", check=True).stdout)
    text = env.rgt("status", run, check=True).stdout
    return data, text


def _release(env, run):
    (env.run_dir(run) / "code" / "release").write_text("")
    wait_until(lambda: env.status(run).get("state") in ("succeeded", "failed"), 300, what=f"{run} to end")
    assert env.status(run)["state"] == "succeeded", env.status(run)


def test_lightning_with_rich_bar_and_the_rgt_callback_shows_live_global_step(env, trainer_python):
    _start(env, trainer_python, "pl-rich", "lightning_tiny.py", "--bar", "rich", "--rgt")
    # 2 epochs of 10 batches: the callback reports the global step (not the bar's per-epoch batch)
    data, text = _live(env, "pl-rich", lambda p: p.get("step") == 20)
    p = data["progress"]
    assert data["state"] == "running" and p["source"] == "helper"
    assert p["total_steps"] == 20 and isinstance(p["loss"], float)
    assert p["metrics"]["learning_rate"] == 0.01 and p["metrics"]["last_save_step"] in (10, 20)
    assert "step 20 of 20  loss " in text and "None" not in text
    saves = json.loads((env.run_dir("pl-rich") / "helper" / "progress.json").read_text())["saves"]
    assert saves and all(s["path"].endswith(".ckpt") and "checkpoints" in s["path"] for s in saves)
    _release(env, "pl-rich")


def test_lightning_with_its_tqdm_bar_and_no_code_change_shows_the_global_batch(env, trainer_python):
    _start(env, trainer_python, "pl-tqdm", "lightning_tiny.py", "--bar", "tqdm")
    # the bar counts batches per epoch (10); the status shows epoch * 10 + batch
    data, text = _live(env, "pl-tqdm", lambda p: p.get("step") == 20)
    p = data["progress"]
    assert p["source"] == "log" and p["total_steps"] is None and isinstance(p["loss"], float)
    assert (p["metrics"]["epoch"], p["metrics"]["batch"], p["metrics"]["batches_per_epoch"]) == (1, 10, 10)
    assert "step 20  loss " in text and "None" not in text
    _release(env, "pl-tqdm")


def test_hf_trainer_with_default_logging_shows_step_and_loss_from_its_log(env, trainer_python):
    _start(env, trainer_python, "hf-log", "hf_tiny.py")
    data, text = _live(env, "hf-log", lambda p: p.get("step") == 12 and p.get("loss") is not None)
    p = data["progress"]
    assert p["source"] == "log" and p["total_steps"] == 12
    # the last training log dict's loss and lr, quoted numbers in transformers 5
    log = (env.run_dir("hf-log") / "logs" / "trainer.log").read_bytes()
    assert b"{'loss': '" in log and b"Writing model shards" in log
    assert "learning_rate" in p["metrics"] and "step 12 of 12  loss " in text
    _release(env, "hf-log")


def test_hf_callback_reports_through_the_helper(env, trainer_python):
    _start(env, trainer_python, "hf-cb", "hf_tiny.py", "--rgt")
    data, _ = _live(env, "hf-cb", lambda p: p.get("step") == 12 and p.get("source") == "helper")
    p = data["progress"]
    assert p["total_steps"] == 12 and isinstance(p["loss"], float) and p["metrics"]["last_save_step"] == 12
    saves = json.loads((env.run_dir("hf-cb") / "helper" / "progress.json").read_text())["saves"]
    assert [os.path.basename(s["path"]) for s in saves] == ["checkpoint-6", "checkpoint-12"]
    _release(env, "hf-cb")


def test_integrations_without_their_framework_fail_clearly(pyz):
    import sys

    for module, package in (("lightning", "lightning"), ("hf", "transformers")):
        p = subprocess.run([sys.executable, "-c", f"import rgt.agent.integrations.{module}"],
                           env=dict(os.environ, PYTHONPATH=pyz), capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and f"needs {package}" in p.stderr and "pip install" in p.stderr
    p = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {pyz!r}); "
                        "from rgt.agent.integrations import rgt_ckpt_path; print(rgt_ckpt_path())"],
                       env=dict(os.environ, RGT_RESUME_FROM="/x/epoch=0-step=10.ckpt"), capture_output=True,
                       text=True, timeout=120)
    assert p.stdout.strip() == "/x/epoch=0-step=10.ckpt"


def test_a_trainer_that_prints_only_its_loss_shows_the_loss_and_no_none(env):
    import sys

    (env.project / "lossonly.py").write_text(
        "import os, time\n"
        "for i in range(5):\n"
        "    print(f'epoch done, loss: {0.5 / (i + 1):.4f}', flush=True)\n"
        "while not os.path.exists('release'):\n"
        "    time.sleep(0.1)\n")
    env.rgt("up", "local", "--run", "lossonly", "--tick-s", "0.5", "--", sys.executable, "lossonly.py", check=True)
    data, text = _live(env, "lossonly", lambda p: p.get("loss") == 0.1)
    assert data["progress"]["step"] is None
    assert "  loss 0.1  (log)" in text and "None" not in text
    assert "no progress seen yet" not in data["next_action"] and "loss 0.1" in data["next_action"]
    _release(env, "lossonly")


def test_the_integrations_import_from_the_archive_and_name_the_resume_target(pyz, trainer_python, tmp_path):
    ckpt = tmp_path / "out" / "checkpoint-6"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"x")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from rgt.agent.integrations.hf import rgt_resume_from; "
            "from rgt.agent.integrations.lightning import RgtCallback, rgt_ckpt_path; "
            "import lightning.pytorch as pl; assert issubclass(RgtCallback, pl.Callback); "
            "print(rgt_resume_from()); print(rgt_ckpt_path())")
    p = subprocess.run([trainer_python, "-I", "-c", code, pyz], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, RGT_RESUME_FROM=str(ckpt / "model.safetensors")))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(ckpt), str(ckpt / "model.safetensors")]
