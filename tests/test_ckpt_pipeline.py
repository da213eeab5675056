"""The agent's checkpoint pipeline against real trainers, a real verifier subprocess and a real tmpfs."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from rgt.agent.ckpt import pipeline as pipeline_mod
from rgt.agent.ckpt import verify
from rgt.agent.ckpt.pipeline import CheckpointPipeline
from rgt.agent.helper import Helper
from rgt.shared.atomic import read_json
from rgt.shared.journal import Journal, read_journal
from rgt.shared.paths import RunPaths
from rgt.shared.spec import RunSpec
from tests.conftest import require_real, scaled, wait_until

PREFIX = [sys.executable, "-m", "rgt.agent.ckpt.verify"]
BEST_LOSS = {"best_metric": {"name": "loss", "mode": "min"}}


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def visible(d) -> list:
    return sorted(n for n in os.listdir(d) if not n.startswith(".") and not n.endswith(".tmp"))


class Rig:
    """One run dir and one pipeline, ticked by the test."""

    def __init__(self, root, prefix=PREFIX, **spec) -> None:
        os.makedirs(root, exist_ok=True)
        self.paths = RunPaths(str(root))
        self.spec = RunSpec(run_id="r1", command=["python", "train.py"], **dict({"settle_s": 0.3}, **spec))
        self.ckpt = os.path.join(str(root), "ckpt")
        self.events: list = []
        self.pipe = CheckpointPipeline(self.spec, self.paths, Journal(self.paths.journal),
                                       logging.getLogger("test-ckpt"), prefix)

    def tick(self) -> None:
        self.events.extend(self.pipe.tick(time.time()))

    def until(self, cond, what: str, timeout_s: float = 300):  # one verifier process per checkpoint, in turn
        def step():
            self.tick()
            return cond()

        return wait_until(step, timeout_s, 0.05, what)

    def record(self, key: str):
        return next((r for r in self.pipe.records() if r["key"] == key), None)

    def done(self, *keys: str) -> bool:
        return self.pipe.pending() == 0 and all(self.record(k) is not None for k in keys)

    def kinds(self, kind: str) -> list:
        return [e for e in self.events if e["kind"] == kind]


@pytest.fixture
def rig(tmp_path):
    rigs = []

    def make(**kw) -> Rig:
        r = Rig(tmp_path / "runs" / "r1", **kw)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.pipe.close()


ZERO_CODE_TRAINER = textwrap.dedent("""
    import io, os, signal, sys, torch
    d = sys.argv[1]
    for step in (1, 2):
        torch.save({"step": step, "w": torch.full((4096,), float(step))}, os.path.join(d, f"ckpt_{step:04d}.pt"))
    buf = io.BytesIO()
    torch.save({"step": 3, "w": torch.randn(1 << 16)}, buf)
    data = buf.getvalue()
    fd = os.open(os.path.join(d, "ckpt_0003.pt"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, data[: len(data) // 2])
    print("cut", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.slow
def test_zero_code_trainer_killed_mid_write_is_never_verified_copied_or_resumed(rig, tmpfs):  # noqa: F811
    durable = tmpfs("durable", "size=64m")
    r = rig(durable_dir=durable)
    r.tick()
    trainer = subprocess.run([sys.executable, "-c", ZERO_CODE_TRAINER, r.ckpt], capture_output=True, text=True,
                             timeout=scaled(120))
    assert trainer.returncode == -9 and "cut" in trainer.stdout, trainer.stderr
    torch.save({"w": torch.tensor([1.0, float("nan")])}, os.path.join(r.ckpt, "ckpt_0004.pt"))
    r.until(lambda: r.done("ckpt_0001.pt", "ckpt_0002.pt", "ckpt_0003.pt", "ckpt_0004.pt"), "all four checked")
    assert [r.record(f"ckpt_000{i}.pt")["state"] for i in (1, 2, 3, 4)] == [
        "verified", "verified", "corrupt", "nonfinite"]
    assert [e["path"] for e in r.kinds("ckpt_verified")] == ["ckpt/ckpt_0001.pt", "ckpt/ckpt_0002.pt"]
    assert r.pipe.resume_from() == os.path.join(r.ckpt, "ckpt_0002.pt")
    assert visible(os.path.join(durable, "rgt", "r1")) == ["ckpt_0001.pt", "ckpt_0002.pt"]
    assert not [n for n in os.listdir(os.path.join(durable, "rgt", "r1")) if n.startswith(".")]
    # Suspect files are moved aside with a reason, never deleted.
    assert visible(r.ckpt) == ["ckpt_0001.pt", "ckpt_0002.pt"]
    for key, reason in (("ckpt_0003.pt", "corrupt"), ("ckpt_0004.pt", "nonfinite")):
        rec = r.record(key)
        moved = os.path.join(r.paths.root, rec["quarantined"])
        assert rec["quarantined"] == f"quarantine/{key}" and sha256(moved) == rec["sha256"]
        why = read_json(moved + ".reason.json")
        assert why["reason"] == reason and why["original_path"] == os.path.join(r.ckpt, key)
    journaled = [e["kind"] for e in read_journal(r.paths.journal).records]
    assert journaled.count("ckpt_quarantined") == 2 and "ckpt_corrupt" in journaled
    assert "ckpt_0004.pt is nonfinite" in r.pipe.warning()


def test_helper_checkpoints_arrive_by_rename_with_sidecar_metrics_and_index_records(rig):
    r = rig()
    r.tick()
    h = Helper(env={"RGT_CKPT_DIR": r.ckpt})
    for step in (1, 2):
        h.save({"w": torch.ones(8) * step}, step, metrics={"loss": 1.0 / step})
        h.wait()
    r.until(lambda: r.done("step_000000001.pt", "step_000000002.pt"), "both verified")
    watch = r.kinds("ckpt_watch")[0]
    rec = r.record("step_000000002.pt")
    require_real(watch["mode"] == "inotify", f"no inotify here: {watch['message']}")
    assert rec["arrived"] == "rename"
    assert (rec["step"], rec["metrics"], rec["state"], rec["tensors"]) == (2, {"loss": 0.5}, "verified", 1)
    index = read_json(os.path.join(r.paths.root, "ckpt_index.json"))
    on_disk = {x["path"]: x for x in index["records"]}
    assert set(on_disk) == {"ckpt/step_000000001.pt", "ckpt/step_000000002.pt"}
    for path, x in on_disk.items():
        full = os.path.join(r.paths.root, path)
        assert (x["sha256"], x["size_bytes"], x["pruned"]) == (sha256(full), os.path.getsize(full), False)
    cp = r.pipe.status(time.time())
    assert (cp.last_path, cp.last_step, cp.resume_from) == ("ckpt/step_000000002.pt", 2, "ckpt/step_000000002.pt")


def test_polling_finds_checkpoints_when_watchdog_does_not_import(rig, monkeypatch):
    monkeypatch.setitem(sys.modules, "watchdog.observers", None)  # `import` raises ImportError
    r = rig()
    r.tick()
    assert r.kinds("ckpt_watch")[0]["mode"] == "polling"
    torch.save({"w": torch.ones(3)}, os.path.join(r.ckpt, "model.pth"))
    r.until(lambda: r.done("model.pth"), "model.pth verified by polling")
    assert r.record("model.pth")["arrived"] == "settled"


@pytest.mark.slow
def test_durable_copies_carry_the_index_sha256_and_retention_keeps_last_3_plus_best(rig, tmpfs):  # noqa: F811
    durable = tmpfs("durable", "size=64m")
    copies = os.path.join(durable, "rgt", "r1")
    r = rig(durable_dir=durable, extra=dict(BEST_LOSS))
    h = Helper(env={"RGT_CKPT_DIR": r.ckpt})
    names = [f"step_{s:09d}.pt" for s in range(1, 8)]
    for step, loss in zip(range(1, 7), [5.0, 1.0, 4.0, 3.0, 2.5, 2.0]):
        h.save({"w": torch.full((256,), float(step))}, step, metrics={"loss": loss})
        h.wait()
    r.until(lambda: r.done(*names[:6]), "six checkpoints checked")
    assert {e["path"]: e["durable"] for e in r.kinds("ckpt_verified")} == {
        f"ckpt/{n}": os.path.join(copies, n) for n in names[:6]}
    kept = [n for n in names[:6] if not r.record(n)["pruned"]]
    assert kept == [names[1], names[3], names[4], names[5]]  # the best (step 2) plus the last three
    assert visible(r.ckpt) == kept and visible(copies) == kept
    assert not [n for n in os.listdir(copies) if n.startswith(".")]
    for n in kept:
        assert sha256(os.path.join(copies, n)) == r.record(n)["sha256"] == sha256(os.path.join(r.ckpt, n))
    for n in (names[0], names[2]):
        assert r.record(n)["durable_pruned"] and r.record(n)["prune_reason"] == "retention"
    h.save({"w": torch.full((256,), 7.0)}, 7, metrics={"loss": 0.5})  # the best is now among the last three
    h.wait()
    r.until(lambda: r.done(names[6]), "step 7 checked")
    assert visible(r.ckpt) == visible(copies) == names[4:7]


def test_hugging_face_checkpoint_dir_renamed_from_tmp_is_one_checkpoint(rig, tmpfs):  # noqa: F811
    durable = tmpfs("durable", "size=64m")
    r = rig(durable_dir=durable)
    r.tick()
    tmp = os.path.join(r.ckpt, "tmp-checkpoint-10")
    os.makedirs(tmp)
    torch.save({"w": torch.ones(4)}, os.path.join(tmp, "pytorch_model.bin"))
    torch.save({"state": {}}, os.path.join(tmp, "optimizer.pt"))
    with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
        f.write('{"global_step": 10}')
    os.rename(tmp, os.path.join(r.ckpt, "checkpoint-10"))
    r.until(lambda: r.done("checkpoint-10"), "checkpoint-10 verified")
    rec = r.record("checkpoint-10")
    assert [x["key"] for x in r.pipe.records()] == ["checkpoint-10"]  # nothing inside tmp-* was taken alone
    assert (rec["is_dir"], rec["state"], rec["step"]) == (True, "verified", 10)
    files = {f["path"]: f["sha256"] for f in rec["files"]}
    assert set(files) == {f"ckpt/checkpoint-10/{n}" for n in ("optimizer.pt", "pytorch_model.bin",
                                                              "trainer_state.json")}
    for path, digest in files.items():
        copy = os.path.join(durable, "rgt", "r1", path[len("ckpt/"):])
        assert sha256(os.path.join(r.paths.root, path)) == digest == sha256(copy)
    assert r.pipe.resume_from() == os.path.join(r.ckpt, "checkpoint-10")


def test_durable_keep_all_leaves_pruned_checkpoints_in_the_durable_dir(rig, tmpfs):  # noqa: F811
    durable = tmpfs("durable", "size=64m")
    r = rig(durable_dir=durable, keep_last=1, extra={"durable_keep": "all"})
    for step in (1, 2):
        torch.save({"w": torch.ones(4) * step}, os.path.join(_mk(r.ckpt), f"e{step}.pt"))
    r.until(lambda: r.done("e1.pt", "e2.pt"), "both checked")
    assert visible(r.ckpt) == ["e2.pt"]
    for key in ("e1.pt", "e2.pt"):
        assert sha256(os.path.join(durable, "rgt", "r1", key)) == r.record(key)["sha256"]


def _mk(d: str) -> str:
    os.makedirs(d, exist_ok=True)
    return d


def test_latest_pt_cut_in_place_resumes_from_the_durable_copy(rig, tmpfs):  # noqa: F811
    durable = tmpfs("durable", "size=64m")
    r = rig(durable_dir=durable)
    latest = os.path.join(_mk(r.ckpt), "latest.pt")
    torch.save({"v": torch.ones(1000)}, latest)
    r.until(lambda: r.done("latest.pt"), "latest.pt verified")
    good = r.record("latest.pt")["sha256"]
    buf = io.BytesIO()
    torch.save({"v": torch.zeros(1000)}, buf)
    with open(latest, "wb") as f:  # a plain torch.save over the same name, killed half-way
        f.write(buf.getvalue()[:2000])
    copy = os.path.join(durable, "rgt", "r1", "latest.pt")
    assert r.pipe.resume_from() == copy
    r.until(lambda: r.done("latest.pt") and r.record("latest.pt")["quarantined"], "cut version quarantined")
    assert r.pipe.resume_from() == copy and sha256(copy) == good


def test_unverified_pickle_is_a_resume_target_only_with_allow_pickle(rig):
    r = rig(keep_last=1)
    torch.save({"w": torch.ones(2)}, os.path.join(_mk(r.ckpt), "a_1.pt"))
    torch.save({"w": torch.ones(2), "cfg": argparse.Namespace(lr=0.1)}, os.path.join(r.ckpt, "a_2.pt"))
    r.until(lambda: r.done("a_1.pt", "a_2.pt"), "both checked")
    assert r.record("a_2.pt")["state"] == "unverified_pickle"
    ev = r.kinds("ckpt_unverified_pickle")[0]
    assert ev["resume_target"] is False and "UNVERIFIED PICKLE" in ev["message"]
    assert r.pipe.resume_from() == os.path.join(r.ckpt, "a_1.pt")
    assert "UNVERIFIED PICKLE" in r.pipe.warning()
    assert r.pipe.prune("disk critical") == []  # never deletes what it could not verify
    assert visible(r.ckpt) == ["a_1.pt", "a_2.pt"]
    r.pipe.close()
    again = rig(allow_pickle=True)  # a restarted agent with --allow-pickle reads the same index
    again.tick()
    assert again.pipe.pending() == 0
    assert again.pipe.resume_from() == os.path.join(r.ckpt, "a_2.pt")


def test_checkpoints_are_unverifiable_not_verified_when_the_trainer_python_lacks_torch(rig, pyz):
    r = rig(prefix=[sys.executable, "-I", "-S", pyz, "verify-ckpt"])  # -S: no site-packages, so no torch
    torch.save({"w": torch.ones(2)}, os.path.join(_mk(r.ckpt), "x.pt"))
    r.until(lambda: r.done("x.pt"), "x.pt checked")
    rec = r.record("x.pt")
    assert rec["state"] == "unverifiable" and "torch is not importable" in rec["detail"]
    assert r.pipe.resume_from() is None and rec["quarantined"] is None
    assert visible(r.ckpt) == ["x.pt"] and r.kinds("ckpt_unverifiable")


def test_verifier_catches_zero_filled_blocks_inside_an_intact_zip(tmp_path):
    p = tmp_path / "z.pt"
    torch.save({"w": torch.randn(4096)}, p)
    data = bytearray(p.read_bytes())
    data[2000:6000] = bytes(4000)  # what a crash without fsync can leave: the central directory is fine
    p.write_bytes(bytes(data))
    result = verify.verify_path(str(p))
    assert result["kind"] == "corrupt" and "CRC" in result["detail"]


def test_verifier_reads_safetensors_and_checkpoint_directories(tmp_path):
    t = torch.arange(6, dtype=torch.float32)
    header = json.dumps({"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}).encode()
    blob = struct.pack("<Q", len(header)) + header + bytes(t.untyped_storage())
    d = tmp_path / "checkpoint-5"
    d.mkdir()
    (d / "model.safetensors").write_bytes(blob)
    torch.save({"x": torch.ones(3)}, d / "optimizer.pt")
    (d / "trainer_state.json").write_text("{}")
    assert verify.verify_path(str(d))["kind"] == "verified"
    (d / "model.safetensors").write_bytes(blob[:-4])
    result = verify.verify_path(str(d))
    assert result["kind"] == "corrupt" and "model.safetensors" in result["detail"]


def test_a_checkpoint_the_trainer_deleted_counts_as_pruned_but_a_vanished_dir_changes_nothing(rig):
    r = rig()
    for step in (1, 2):
        torch.save({"w": torch.ones(2) * step}, os.path.join(_mk(r.ckpt), f"checkpoint_{step}.pt"))
    r.until(lambda: r.done("checkpoint_1.pt", "checkpoint_2.pt"), "both verified")
    os.rename(r.ckpt, r.ckpt + ".away")  # an NFS hiccup, or a person moving the dir for a moment
    r.tick()
    assert not any(x["pruned"] for x in r.pipe.records())
    os.rename(r.ckpt + ".away", r.ckpt)
    os.unlink(os.path.join(r.ckpt, "checkpoint_2.pt"))  # the trainer's own rotation
    r.tick()
    gone = r.record("checkpoint_2.pt")
    assert gone["pruned"] and gone["missing"] and "not by rgt" in gone["prune_reason"]
    assert r.pipe.resume_from() == os.path.join(r.ckpt, "checkpoint_1.pt")


def test_an_agent_stopped_mid_verify_records_nothing_and_the_next_agent_verifies(rig):
    slow = rig(prefix=[sys.executable, "-c", "import time; time.sleep(600)"])  # busy until the agent stops
    torch.save({"w": torch.ones(2)}, os.path.join(_mk(slow.ckpt), "a.pt"))
    slow.until(lambda: slow.pipe._proc is not None, "the verifier started")
    slow.pipe.close()
    assert slow.pipe.records() == []
    again = rig()
    again.until(lambda: again.done("a.pt"), "a.pt verified by the next agent")
    assert again.record("a.pt")["state"] == "verified"


def test_a_full_durable_dir_fails_loudly_and_the_copy_is_retried_once_there_is_room(
        rig, tmpfs, monkeypatch):  # noqa: F811
    monkeypatch.setattr(pipeline_mod, "DURABLE_RETRY_S", 0.0)
    durable = tmpfs("durable", "size=64k")
    r = rig(durable_dir=durable)
    torch.save({"w": torch.randn(1 << 16)}, os.path.join(_mk(r.ckpt), "big.pt"))  # 256 KiB
    r.until(lambda: r.kinds("ckpt_durable_failed"), "the durable copy failed")
    assert "No space left" in r.kinds("ckpt_durable_failed")[0]["error"]
    assert r.record("big.pt")["state"] == "verified" and r.record("big.pt")["durable"] is None
    assert "durable copy of ckpt/big.pt failed" in r.pipe.warning()
    assert os.listdir(os.path.join(durable, "rgt", "r1")) == []  # nothing half-published, no temp left
    subprocess.run(["mount", "-o", "remount,size=4m", durable], check=True)
    r.until(lambda: r.kinds("ckpt_durable_copied"), "the retried copy landed")
    copy = os.path.join(durable, "rgt", "r1", "big.pt")
    assert sha256(copy) == r.record("big.pt")["sha256"] and r.pipe.warning() is None


def test_retention_never_prunes_a_checkpoint_without_a_step_in_its_name(rig):
    r = rig()
    d = _mk(r.ckpt)
    torch.save({"w": torch.ones(2)}, os.path.join(d, "best.pt"))
    for step in range(1, 6):
        torch.save({"w": torch.ones(2) * step}, os.path.join(d, f"step_{step:04d}.pt"))
    r.until(lambda: all(r.done(n) for n in ["best.pt"] + [f"step_{s:04d}.pt" for s in range(1, 6)]), "all checked")
    r.pipe.prune("test")
    left = visible(r.ckpt)
    assert "best.pt" in left
    assert [n for n in left if n.startswith("step_")] == ["step_0003.pt", "step_0004.pt", "step_0005.pt"]
