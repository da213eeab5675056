"""The checkpoint verifier on files the real frameworks wrote (Lightning, HF Trainer), and on hostile pickles.

The files come from tests/trainers/real_ckpts.py under the trainer venv; the checks run both in the box's
verifier subprocess (the agent archive under the trainer's python) and in rgt's own venv (the laptop's side),
which has neither lightning nor transformers.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from rgt.shared.ckptcheck import verify_path
from rgt.shared.picklesafe import pickle_globals
from tests.conftest import REPO, scaled

GEN = os.path.join(REPO, "tests", "trainers", "real_ckpts.py")


@pytest.fixture(scope="module")
def real(trainer_python, tmp_path_factory):
    """Checkpoints written by lightning 2.6 and transformers 5 themselves."""
    out = tmp_path_factory.mktemp("real")
    p = subprocess.run([trainer_python, GEN, str(out)], capture_output=True, text=True, timeout=scaled(600))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out


def box_verify(trainer_python, pyz, *paths) -> list:
    """What the agent's pipeline runs: `verify-ckpt` from the archive, under the trainer's python."""
    p = subprocess.run([trainer_python, pyz, "verify-ckpt", *map(str, paths)], capture_output=True, text=True,
                       timeout=scaled(300))
    assert p.returncode in (0, 1), p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


class Evil:
    """A pickle that runs code when loaded: it writes the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_a_lightning_modelcheckpoint_file_verifies_though_its_callback_state_holds_inf(real, trainer_python, pyz):
    (ckpt,) = (real / "lightning").iterdir()
    raw = torch.load(ckpt, weights_only=True)
    (state,) = [v for k, v in raw["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert torch.isinf(state["kth_value"]), "the real file holds the sentinel this test is about"
    for r in [verify_path(str(ckpt)), *box_verify(trainer_python, pyz, ckpt)]:
        assert r["kind"] == "verified" and r["ok"], r
        assert r["coverage"] == "full" and r["hash_only"] == []
        assert "bookkeeping" in r["detail"]


def test_nan_in_the_model_weights_of_a_lightning_checkpoint_is_named_by_its_key_path(real, trainer_python, pyz):
    nan = real / "lightning_nan.ckpt"
    for r in [verify_path(str(nan)), *box_verify(trainer_python, pyz, nan)]:
        assert r["kind"] == "nonfinite", r
        assert "state_dict.layer.weight (NaN)" in r["detail"]
        assert "kth_value" not in r["detail"]


def test_an_hf_checkpoint_dir_is_a_verified_resume_target_with_training_args_hash_only(real, trainer_python, pyz):
    dirs = sorted((real / "hf").glob("checkpoint-*"))
    assert [d.name for d in dirs] == ["checkpoint-2", "checkpoint-4"]
    assert {f.name for f in dirs[0].iterdir()} >= {"model.safetensors", "optimizer.pt", "rng_state.pth",
                                                   "scheduler.pt", "training_args.bin", "trainer_state.json"}
    for r in [verify_path(str(dirs[-1])), *box_verify(trainer_python, pyz, dirs[-1])]:
        assert r["kind"] == "verified" and r["ok"], r
        assert r["coverage"] == "partial" and r["hash_only"] == ["training_args.bin"]
        assert "rng_state.pth: weights_only with the numpy allowlist" in r["detail"]
        assert "metadata, hash only (never unpickled): training_args.bin" in r["detail"]


def test_rgts_own_venv_verifies_hf_files_one_by_one_without_transformers(real):
    """The laptop's checks file by file; rgt's venv has no transformers, and nothing is unpickled."""
    import importlib.util

    assert importlib.util.find_spec("transformers") is None and importlib.util.find_spec("accelerate") is None
    d = real / "hf" / "checkpoint-4"
    args = verify_path(str(d / "training_args.bin"))
    assert args["kind"] == "verified" and args["hash_only"] == ["training_args.bin"]
    assert "transformers.training_args.TrainingArguments" in args["detail"]
    rng = verify_path(str(d / "rng_state.pth"))
    assert rng["kind"] == "verified" and rng["how"] == "weights_only with the numpy allowlist"
    assert verify_path(str(d / "optimizer.pt"))["kind"] == "verified"


def test_nan_in_an_hf_optimizer_state_names_the_file_and_the_tensor(real, tmp_path):
    d = shutil.copytree(real / "hf" / "checkpoint-4", tmp_path / "checkpoint-4")
    opt = torch.load(d / "optimizer.pt", weights_only=True)
    opt["state"][0]["exp_avg"].view(-1)[0] = float("nan")
    torch.save(opt, d / "optimizer.pt")
    r = verify_path(str(d))
    assert r["kind"] == "nonfinite"
    assert "optimizer.pt: 1 tensor(s) hold NaN or inf: state.0.exp_avg (NaN)" in r["detail"]


def test_a_cut_training_args_bin_makes_the_hf_dir_corrupt(real, tmp_path):
    d = shutil.copytree(real / "hf" / "checkpoint-4", tmp_path / "checkpoint-4")
    data = (d / "training_args.bin").read_bytes()
    (d / "training_args.bin").write_bytes(data[: len(data) // 2])
    r = verify_path(str(d))
    assert r["kind"] == "corrupt" and "training_args.bin" in r["detail"]


def test_a_pickle_that_runs_code_is_never_executed_by_verification(real, tmp_path, trainer_python, pyz):
    marker = tmp_path / "PWNED"
    evil = Evil(str(marker))
    pickle.loads(pickle.dumps(Evil(str(tmp_path / "proof"))))
    assert (tmp_path / "proof").exists(), "the payload really runs when unpickled"

    plain = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": evil}, plain)
    hf = shutil.copytree(real / "hf" / "checkpoint-4", tmp_path / "checkpoint-4")
    torch.save(evil, hf / "training_args.bin")  # hostile metadata: hash only, its opcodes are only read
    rng_dir = shutil.copytree(real / "hf" / "checkpoint-4", tmp_path / "checkpoint-rng")
    torch.save({"numpy": np.array([evil], dtype=object)}, rng_dir / "rng_state.pth")  # past the numpy allowlist
    raw = tmp_path / "raw.pkl.pt"
    raw.write_bytes(pickle.dumps(evil, protocol=2))

    results = [verify_path(str(p)) for p in (plain, hf, rng_dir, raw)]
    results += box_verify(trainer_python, pyz, plain, hf, rng_dir, raw)
    assert not marker.exists(), "verification ran the pickle's code"
    by_kind = [r["kind"] for r in results]
    assert by_kind == ["unverified_pickle", "verified", "unverified_pickle", "unverified_pickle"] * 2, results
    assert all("Unsupported global: GLOBAL exec" in r["detail"] for r in results if r["kind"] == "unverified_pickle")
    assert results[1]["hash_only"] == ["training_args.bin"]
    assert "a pickle naming builtins.exec" in verify_path(str(hf / "training_args.bin"))["detail"]
    assert not marker.exists()


def test_pickle_globals_reads_names_without_running_and_refuses_a_cut_stream(tmp_path):
    data = pickle.dumps(Evil(str(tmp_path / "x")), protocol=4)
    assert "builtins.exec" in pickle_globals(data)
    with pytest.raises(ValueError, match="STOP|EOF|truncated|ran out|not enough"):
        pickle_globals(data[:-3])
    assert not (tmp_path / "x").exists()
    with zipfile.ZipFile(tmp_path / "z.bin", "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/data/0", b"\0" * 8)
    r = verify_path(str(tmp_path / "z.bin"))
    assert r["kind"] in ("unverified_pickle", "corrupt") and not (tmp_path / "x").exists()


def test_numpy_arrays_and_scalars_load_under_the_allowlist_but_numpy_callables_do_not(tmp_path):
    torch.save({"w": torch.ones(2), "best_loss": np.float64(0.5), "seen": np.arange(4)}, tmp_path / "np.pt")
    r = verify_path(str(tmp_path / "np.pt"))
    assert r["kind"] == "verified" and r["how"] == "weights_only with the numpy allowlist"

    class Loader:
        def __reduce__(self):
            return np.load, (str(tmp_path / "x.npy"),)

    torch.save({"w": torch.ones(2), "x": Loader()}, tmp_path / "npcall.pt")
    r = verify_path(str(tmp_path / "npcall.pt"))
    assert r["kind"] == "unverified_pickle" and "numpy" in r["detail"] and "load" in r["detail"]


def test_finite_values_whose_sum_overflows_are_finite_and_inf_or_nan_anywhere_is_found(tmp_path):
    big = torch.full((4096,), 60000.0, dtype=torch.float16)  # finite, but the float16 sum is inf
    torch.save({"w": big}, tmp_path / "big.pt")
    assert verify_path(str(tmp_path / "big.pt"))["kind"] == "verified"
    for value, what in ((float("inf"), "inf"), (float("nan"), "NaN")):
        w = torch.zeros(1000)
        w[777] = value
        torch.save({"model": {"w": w}, "best": torch.tensor(float("inf"))}, tmp_path / "bad.pt")
        r = verify_path(str(tmp_path / "bad.pt"))
        assert r["kind"] == "nonfinite" and r["detail"].endswith(f"model.w ({what})"), r
