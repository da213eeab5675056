"""`rgt pull --follow`: the laptop keeps the newest verified checkpoint during the run, and pruned ones stay valid."""

from __future__ import annotations

import os
from pathlib import Path

from rgt.controller import pull, verify
from rgt.controller.registry import Registry
from rgt.controller.transport.local import LocalTransport
from tests.fake_providers import (
    add_checkpoint,
    ckpt_record,
    finish,
    make_run,
    register,
    run_cli,
    torch_bytes,
    write_index,
)


def test_follow_pulls_each_new_checkpoint_keeps_pruned_ones_and_ends_verified(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    box = tmp_path / "box"
    paths = make_run(box, "fol1", {}, {"step_1.pt": torch_bytes(1)}, marker=None)
    rec = register(tmp_path / "state", box, "fol1")
    dest = tmp_path / "rgt-pulls" / "fol1"
    hashed: list = []
    real_hash = verify.hash_files
    monkeypatch.setattr(verify, "hash_files", lambda d, rels, *a, **k: (hashed.append(sorted(rels)),
                                                                        real_hash(d, rels, *a, **k))[1])
    held: list = []

    def advance(_s: float) -> None:
        held.append(sorted(p for p in os.listdir(dest / "ckpt")))
        step = len(held)
        if step == 1:  # a newer checkpoint; retention prunes the first one on the box
            first = ckpt_record(paths, "ckpt/step_1.pt")
            os.unlink(os.path.join(paths.root, "ckpt", "step_1.pt"))
            write_index(paths, [dict(first, pruned=True), add_checkpoint(paths, "step_2.pt", torch_bytes(2))])
        elif step == 3:  # the run ends with an artifact
            Path(paths.code, "out").mkdir()
            Path(paths.code, "out", "final.txt").write_text("done")
            finish(paths)

    opts = pull.PullOptions(interval_s=0.0)
    report = pull.follow(Registry(tmp_path / "state"), LocalTransport(str(box)), rec, opts, lambda s: None,
                         sleep=advance)
    assert held == [["step_1.pt"], ["step_1.pt", "step_2.pt"], ["step_1.pt", "step_2.pt"]]
    assert report.ok and report.checkpoints == 2
    assert ["ckpt/step_2.pt"] in hashed  # the middle round hashed only what moved
    assert len(hashed) == 3  # the unchanged third round hashed nothing at all
    box_m = Path(paths.manifest).read_bytes()
    assert verify.read_verified(str(dest))["manifest_sha256"] == verify.manifest_sha_of(box_m)
    assert (dest / "code/out/final.txt").read_text() == "done"
    assert Registry(tmp_path / "state").get("fol1").pull_dest == str(dest)
    code, _out, err = run_cli(capsys, "down", "fol1", "--confirm", "fol1")
    assert code == 0, err


def test_plain_pull_during_the_run_takes_the_checkpoints_and_says_the_run_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "box", "mid1", {"out/a.bin": b"a"}, {"step_1.pt": torch_bytes(1)}, marker=None)
    register(tmp_path / "state", tmp_path / "box", "mid1")
    code, _out, err = run_cli(capsys, "pull", "mid1")
    assert code == 0, err
    assert "still going" in err
    assert not (tmp_path / "rgt-pulls/mid1/code").exists()  # artifacts wait for the end
    code, _out, err = run_cli(capsys, "down", "mid1", "--confirm", "mid1")
    assert code == 4
    assert "has not ended" in err


def test_pull_before_any_checkpoint_of_a_running_run_says_nothing_to_pull(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "box", "mid2", {}, {}, marker=None)
    register(tmp_path / "state", tmp_path / "box", "mid2")
    code, _out, err = run_cli(capsys, "pull", "mid2")
    assert code == 1
    assert "no verified checkpoint yet" in err
