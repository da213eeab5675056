"""[progress] patterns in rgt.toml and --progress-* on `rgt up` (checked on the laptop), and status's line."""

from __future__ import annotations

import json

import pytest

from rgt.controller.commands.status import progress_line
from rgt.shared.status import Progress


def test_toml_and_flags_set_the_specs_progress_patterns(env):
    (env.project / "rgt.toml").write_text('[progress]\nloss = "objective (\\\\S+)"\nstep = "it=(\\\\d+)"\n')
    p = env.rgt("up", "local", "--dry-run", "--json", "--progress-step", r"iteration (\d+)", "--", "python3",
                "train.py", check=True)
    assert json.loads(p.stdout)["spec"]["progress_patterns"] == {"loss": r"objective (\S+)",
                                                                 "step": r"iteration (\d+)"}


@pytest.mark.parametrize(("args", "toml", "words"), [
    (["--progress-step", "step=(\\d+"], None, '--progress-step: progress pattern step = "step=(\\d+"'),
    (["--progress-loss", "loss=\\d+"], None, "needs a capture group"),
    ([], '[progress]\ntotal = "of ("\n', 'rgt.toml:2: progress pattern total = "of ("'),
    ([], '[progress]\nspeed = "(\\\\d+)"\n', "progress.speed: unknown key"),
])
def test_a_bad_progress_pattern_is_one_line_exit_2_naming_it(env, args, toml, words):
    if toml:
        (env.project / "rgt.toml").write_text(toml)
    p = env.rgt("up", "local", "--run", "badpat", *args, "--", "python3", "train.py")
    assert p.returncode == 2
    errors = [x for x in p.stderr.splitlines() if x.startswith("rgt:")]
    assert len(errors) == 1 and words in errors[0], p.stderr
    assert "Traceback" not in p.stderr and not env.run_dir("badpat").exists()


@pytest.mark.parametrize(("progress", "line"), [
    (Progress(step=120, total_steps=1000, loss=2.3146, source="log"), "step 120 of 1000  loss 2.315  (log)"),
    (Progress(loss=0.5, source="log"), "loss 0.5  (log)"),
    (Progress(step=7, source="helper"), "step 7  (helper)"),
    (Progress(metrics={"epoch": 3, "batch": 7}, loss=0.5, source="log"), "epoch 3 batch 7  loss 0.5  (log)"),
    (Progress(step=12, metrics={"nonfinite_loss": "nan"}, source="log"), "step 12  loss nan  (log)"),
    (Progress(), ""),
])
def test_status_shows_what_is_known_and_never_none(progress, line):
    assert progress_line(progress) == line
    assert "None" not in progress_line(progress)
