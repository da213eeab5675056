"""Discovery rules on real files: what is searched, what is one checkpoint, what came with the code."""

from __future__ import annotations

import logging
import os
import sys
import time

import torch

from rgt.agent.ckpt.pipeline import CheckpointPipeline
from rgt.agent.ckpt.scan import Matcher, list_candidates
from rgt.shared.journal import Journal
from rgt.shared.paths import RunPaths, box_path, origin_path
from rgt.shared.spec import DEFAULT_CKPT_GLOBS, RunSpec
from tests.conftest import wait_until

PREFIX = [sys.executable, "-m", "rgt.agent.ckpt.verify"]


def _save(path, value: float = 1.0) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"w": torch.full((8,), value)}, path)


def test_caches_and_tool_dirs_are_never_searched_and_deep_framework_folders_are(tmp_path):
    root = tmp_path / "code"
    for rel in (".git/objects/x.pt", "__pycache__/y.pt", "node_modules/a/b.pt", "wandb/run-1/files/m.pt",
                "hf/hub/models--gpt2/snapshots/1/model.safetensors", "venv/lib/site-packages/t.pt",
                "logs/lightning_logs/version_0/checkpoints/epoch=0-step=5.ckpt", "out/checkpoint-4/optimizer.pt"):
        _save(str(root / rel))
    stats: dict = {}
    found = list_candidates(str(root), Matcher(DEFAULT_CKPT_GLOBS), budget=1000, stats=stats)
    assert set(found) == {"logs/lightning_logs/version_0/checkpoints/epoch=0-step=5.ckpt", "out/checkpoint-4"}
    assert found["out/checkpoint-4"][1] is True and stats["entries"] > 0 and not stats["truncated"]


def test_a_saved_model_folder_is_one_checkpoint_but_the_root_never_is(tmp_path):
    root = tmp_path / "code"
    (root / "final").mkdir(parents=True)
    (root / "final" / "model.safetensors").write_bytes(b"weights")
    (root / "final" / "config.json").write_text("{}")
    (root / "final" / "tokenizer.json").write_text("{}")
    (root / "config.json").write_text("{}")  # the project's own config beside a top-level model.pt
    _save(str(root / "model.pt"))
    found = list_candidates(str(root), Matcher(DEFAULT_CKPT_GLOBS))
    assert found == {"final": (str(root / "final"), True), "model.pt": (str(root / "model.pt"), False)}


def test_manifest_paths_outside_the_run_dir_are_abs_and_map_back():
    assert origin_path("/r/runs/x", "/r/runs/x/code/out/a.pt") == "code/out/a.pt"
    assert origin_path("/r/runs/x", "/workspace/ckpt/a.pt") == "abs/workspace/ckpt/a.pt"
    assert box_path("/r/runs/x", "abs/workspace/ckpt/a.pt") == "/workspace/ckpt/a.pt"
    assert box_path("/r/runs/x", "ckpt/a.pt") == "/r/runs/x/ckpt/a.pt"


def _pipe(run, **spec):
    paths = RunPaths(str(run))
    os.makedirs(paths.code, exist_ok=True)
    s = RunSpec(run_id="r1", command=["python", "train.py"], **dict({"settle_s": 0.2}, **spec))
    return CheckpointPipeline(s, paths, Journal(paths.journal), logging.getLogger("test-disc"), PREFIX)


def _keys(pipe) -> dict:
    return {r["key"]: r for r in pipe.records()}


def test_files_uploaded_with_the_code_are_not_checkpoints_until_the_trainer_rewrites_them(tmp_path):
    run = tmp_path / "runs" / "r1"
    _save(str(run / "code" / "pretrained" / "base.pt"))
    pipe = _pipe(run)
    try:
        pipe.tick(time.time())  # the baseline is taken at the first start, before any launch
        _save(str(run / "code" / "out" / "ckpt.pt"), 2.0)
        wait_until(lambda: pipe.tick(time.time()) is not None and "code/out/ckpt.pt" in _keys(pipe)
                   and pipe.pending() == 0, 120, what="out/ckpt.pt verified")
        assert "code/pretrained/base.pt" not in _keys(pipe)
        time.sleep(0.01)  # a rewrite must move the mtime past the baseline's
        _save(str(run / "code" / "pretrained" / "base.pt"), 3.0)
        wait_until(lambda: pipe.tick(time.time()) is not None and "code/pretrained/base.pt" in _keys(pipe)
                   and pipe.pending() == 0, 120, what="the rewritten base.pt verified")
        assert _keys(pipe)["code/pretrained/base.pt"]["state"] == "verified"
    finally:
        pipe.close()


def test_a_ckpt_dir_inside_the_working_dir_finds_each_checkpoint_once(tmp_path):
    run = tmp_path / "runs" / "r1"
    pipe = _pipe(run, ckpt_dir="code/out")
    try:
        pipe.tick(time.time())
        _save(str(run / "code" / "out" / "step_1.pt"))
        wait_until(lambda: pipe.tick(time.time()) is not None and _keys(pipe) and pipe.pending() == 0, 120,
                   what="step_1.pt verified")
        assert list(_keys(pipe)) == ["step_1.pt"] and _keys(pipe)["step_1.pt"]["path"] == "code/out/step_1.pt"
        assert pipe.kind_of("step_1.pt") == "user"  # a dir the user chose: never pruned by default
    finally:
        pipe.close()
