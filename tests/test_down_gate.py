"""The Iron Law at `rgt down`: no verified pull of the box's current manifest, no release (exit 4)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from rgt.controller.registry import Registry
from tests.fake_providers import add_checkpoint, ckpt_record, make_run, register, run_cli, torch_bytes, write_index

RUN = "gate1"


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A finished run on a local box with two checkpoints, registered; nothing pulled yet."""
    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    paths = make_run(tmp_path / "box", RUN, {"out/a.bin": b"a" * 100}, {"step_1.pt": torch_bytes(1)})
    register(tmp_path / "state", tmp_path / "box", RUN)
    return paths


def test_down_before_any_pull_refuses_with_exit_4(run, capsys):
    code, _out, err = run_cli(capsys, "down", RUN, "--confirm", RUN)
    assert code == 4
    assert "no verified pull" in err and f"rgt pull {RUN}" in err


def test_there_is_no_yes_flag(run, capsys):
    code, _out, _err = run_cli(capsys, "down", RUN, "-y")
    assert code == 2


def test_down_after_a_new_checkpoint_on_the_box_refuses(run, capsys):
    """Seed eval case 19: an older local checkpoint never satisfies the gate."""
    assert run_cli(capsys, "pull", RUN)[0] == 0
    write_index(run, [ckpt_record(run, "ckpt/step_1.pt"), add_checkpoint(run, "step_2.pt", torch_bytes(2))])
    code, _out, err = run_cli(capsys, "down", RUN, "--confirm", RUN)
    assert code == 4
    assert "the box's manifest changed since your pull" in err
    assert run_cli(capsys, "pull", RUN)[0] == 0
    assert run_cli(capsys, "down", RUN, "--confirm", RUN)[0] == 0


def test_down_with_the_wrong_run_id_typed_back_refuses(run, capsys):
    assert run_cli(capsys, "pull", RUN)[0] == 0
    code, _out, err = run_cli(capsys, "down", RUN, stdin="gate2\n")
    assert code == 4
    assert "did not match" in err
    assert "teardown" not in Registry(Path(os.environ["RGT_STATE_DIR"])).get(RUN).extra


def test_down_with_the_run_id_typed_back_clears_the_run(run, capsys):
    assert run_cli(capsys, "pull", RUN)[0] == 0
    code, _out, err = run_cli(capsys, "down", RUN, stdin=f"{RUN}\n")
    assert code == 0, err
    assert "safe to destroy" in err
    teardown = Registry(Path(os.environ["RGT_STATE_DIR"])).get(RUN).extra["teardown"]
    assert teardown["state"] == "cleared"


def test_down_refuses_while_the_run_still_goes_and_force_needs_its_own_sentence(run, capsys):
    os.unlink(run.marker("DONE"))
    assert run_cli(capsys, "pull", RUN)[0] == 0
    code, _out, err = run_cli(capsys, "down", RUN, "--confirm", RUN)
    assert code == 4 and "has not ended" in err
    code, _out, err = run_cli(capsys, "down", RUN, "--confirm", RUN, "--force-running", stdin=f"{RUN}\n")
    assert code == 4 and "running-run confirmation did not match" in err
    code, _out, err = run_cli(capsys, "down", RUN, "--confirm", RUN, "--force-running", stdin=f"{RUN} running\n")
    assert code == 0, err


def test_down_rehashes_a_touched_tree_and_passes_when_the_bytes_are_the_same(run, capsys, tmp_path):
    assert run_cli(capsys, "pull", RUN)[0] == 0
    dest = tmp_path / "rgt-pulls" / RUN
    before = json.loads((dest / "PULL_VERIFIED.json").read_text())["fingerprint"]
    later = time.time() + 60
    os.utime(dest / "code/out/a.bin", (later, later))
    code, _out, err = run_cli(capsys, "down", RUN, "--confirm", RUN)
    assert code == 0, err
    after = json.loads((dest / "PULL_VERIFIED.json").read_text())["fingerprint"]
    assert after != before  # re-hashed, still the same bytes: the record now holds the new stat


def test_down_refuses_when_the_box_cannot_build_its_manifest(run, capsys, tmp_path):
    assert run_cli(capsys, "pull", RUN)[0] == 0
    os.rename(run.spec, run.spec + ".moved")
    code, _out, err = run_cli(capsys, "down", RUN, "--confirm", RUN)
    assert code == 4
    assert "nothing was released" in err


def test_down_names_the_meter_stop_verb_and_what_keeps_billing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "box", "vast1", {"out/a.bin": b"a"})
    register(tmp_path / "state", tmp_path / "box", "vast1", profile="vastai")
    assert run_cli(capsys, "pull", "vast1")[0] == 0
    code, _out, err = run_cli(capsys, "down", "vast1", "--confirm", "vast1")
    assert code == 0, err
    assert "`destroy`, IRREVERSIBLE" in err
    assert "Volumes, per GB until you delete them" in err
    assert "released nothing itself" in err and "--instance-id" in err
