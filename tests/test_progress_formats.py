"""Progress from what real trainers print: table tests over captured output (tests/trainers/capture.py)."""

from __future__ import annotations

import math
import os

import pytest

from rgt.agent import progformats
from rgt.agent.progress import LogProgress
from rgt.shared.status import Status

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "progress")


def fixture(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name + ".log"), "rb") as f:
        return f.read()


def follow(tmp_path, data: bytes, chunk: int, patterns=None):
    """Append ``data`` to a log ``chunk`` bytes at a time, polling after each; the parser and the steps seen."""
    path = str(tmp_path / f"trainer-{chunk}.log")
    lp = LogProgress(path, patterns)
    seen = []
    with open(path, "wb") as f:
        for i in range(0, len(data), chunk):
            f.write(data[i:i + chunk])
            f.flush()
            lp.poll(0.0)
            if lp.progress.step is not None and (not seen or seen[-1] != lp.progress.step):
                seen.append(lp.progress.step)
    return lp, seen


# name: (step, total_steps, loss, metrics that must be there)
TABLE = {
    # Lightning's tqdm bar counts batches per epoch: 2 epochs x 10 batches is global batch 20, total unknown.
    "lightning_tqdm": (20, None, 1.04, {"epoch": 1, "batch": 10, "batches_per_epoch": 10, "v_num": 0}),
    # HF Trainer 5: quoted numbers in the log dicts, the step from the \r-redrawn bar (12 of max_steps 12).
    "hf_trainer": (12, 12, 3.899, {"learning_rate": 4.167e-06, "grad_norm": 0.8247, "epoch": 0.75,
                                   "eval_loss": 3.912}),
    "nanogpt": (12, None, 1.0317, {}),
    # pytorch-tutorial: Epoch [2/2], Step [8/8] is global step 16 of 16.
    "tutorial": (16, 16, 0.9984, {"epoch": 2, "batch": 8}),
    "demo": (6, None, 12.30749, {}),
    "plain": (6, 6, 1.1382, {}),
}


@pytest.mark.parametrize("name", sorted(TABLE))
@pytest.mark.parametrize("chunk", [7, 997, 1 << 20])
def test_real_trainer_output_gives_step_total_and_loss(tmp_path, name, chunk):
    step, total, loss, metrics = TABLE[name]
    lp, seen = follow(tmp_path, fixture(name), chunk)
    p = lp.progress
    assert (p.step, p.total_steps, p.loss) == (step, total, loss)
    for key, value in metrics.items():
        assert p.metrics.get(key) == pytest.approx(value), key
    assert seen == sorted(seen), f"the step went back: {seen}"
    assert lp.nonfinite_streak == 0 and not lp.nan_seen


@pytest.mark.parametrize("name", ["hf_trainer", "lightning_tqdm"])
def test_bars_that_are_not_training_never_move_the_step(tmp_path, name):
    data = fixture(name)
    # Lines of other bars are in the real output: HF's eval bar (n/2) and "Writing model shards 1/1",
    # Lightning's sanity check and validation bars (n/2, n/1).
    assert (b"Writing model shards" in data) if name == "hf_trainer" else (b"Validation DataLoader" in data)
    lp, seen = follow(tmp_path, data, 7)
    assert seen == sorted(seen)
    lock = lp._lock
    before = lp.progress.step
    for segment in data.decode().replace("\n", "\r").split("\r"):
        if segment.startswith(("Writing model shards", "Validation", "Sanity Checking")):
            got = progformats.parse(segment, {}, lock, lp._state)
            assert got.step is None and got.loss is None, segment
    assert lp.progress.step == before


def test_hf_bar_is_read_from_carriage_return_redraws_before_any_newline(tmp_path):
    data = fixture("hf_trainer")
    redraw = data.index(b"| 4/12 [")
    cut = data.index(b"]", redraw) + 1
    assert b"\n" not in data[data.rindex(b"\n", 0, redraw) + 1:cut]  # the bar's line has not ended here
    lp, _ = follow(tmp_path, data[:cut], 1 << 20)
    assert (lp.progress.step, lp.progress.total_steps) == (4, 12)
    assert lp.progress.loss is not None  # from the log dicts printed so far (stdout, interleaved)


def test_a_half_written_redraw_waits_for_its_end(tmp_path):
    data = fixture("hf_trainer")
    redraw = data.index(b"| 4/12 [")
    lp, _ = follow(tmp_path, data[:redraw + 6], 1 << 20)  # "| 4/12" and no "]" yet
    assert lp.progress.step is not None and lp.progress.step < 4


def test_non_finite_loss_parses_as_nan_and_counts_consecutive_reports(tmp_path):
    lp, _ = follow(tmp_path, fixture("nanogpt_nan"), 7)
    p = lp.progress
    assert p.step == 12 and math.isnan(p.loss)
    # iters 9..12 printed "loss nan" (the eval line at step 10 repeats iter 10's report, counted once)
    assert lp.nonfinite_streak == 4 and lp.nan_seen
    assert p.metrics["nonfinite_loss"] == "nan"
    st = Status(run_id="r", state="running", progress=p)
    assert b'"loss":null' in st.to_json() and b'"nonfinite_loss":"nan"' in st.to_json()
    lp.feed("iter 13: loss 1.0000, time 1.00ms, mfu 1.00%", 0.0)
    assert lp.nonfinite_streak == 0 and lp.progress.loss == 1.0 and "nonfinite_loss" not in p.metrics
    for text in ("inf", "-inf", "NaN"):
        lp.feed(f"step 20 loss {text}", 0.0)
        assert not math.isfinite(lp.progress.loss)


def test_a_new_attempt_unlocks_the_bar_and_the_epoch_step(tmp_path):
    lp, _ = follow(tmp_path, fixture("lightning_tqdm"), 1 << 20)
    assert lp.progress.step == 20
    lp.feed("=== rgt attempt 2 ===", 0.0)
    lp.feed("Epoch 0:  50%|#####     | 5/10 [00:00<00:00, 609.87it/s, v_num=1, train_loss=4.650]", 0.0)
    assert lp.progress.step == 5 and lp.progress.loss == 4.65


def test_lightning_bar_without_epoch_length_reports_epoch_and_batch_but_no_global_step():
    lp = LogProgress("/nonexistent")
    # Lightning's bar_format with an unknown length, as its "Training: |  | 0/? [...]" line shows it
    lp.feed("Epoch 3: |          | 7/? [00:01<00:00, 7.0it/s, v_num=0, train_loss=0.500]", 0.0)
    p = lp.progress
    assert p.step is None and p.loss == 0.5 and (p.metrics["epoch"], p.metrics["batch"]) == (3, 7)


def test_user_patterns_replace_the_built_ins_by_key(tmp_path):
    data = b"it=5 of 40 | objective 0.25 | step 999\nit=6 of 40 | objective 0.20 | step 999\n"
    patterns = {"step": r"it=(\d+)", "loss": r"objective ([\d.]+)", "total": r"of (\d+)"}
    lp, _ = follow(tmp_path, data, 5, patterns)
    assert (lp.progress.step, lp.progress.total_steps, lp.progress.loss) == (6, 40, 0.20)
    lp2, _ = follow(tmp_path, fixture("nanogpt"), 997, {"loss": r"val loss ([\d.]+)"})
    assert lp2.progress.step == 12  # the built-in step still reads nanoGPT
    assert lp2.progress.loss == pytest.approx(0.8405, abs=0.5)  # from the eval line only


@pytest.mark.parametrize(("key", "text", "words"), [
    ("step", "step=(\\d+", "not a valid regex"),
    ("loss", "loss=\\d+", "needs a capture group"),
    ("speed", "(\\d+)", "unknown"),
    ("total", "", "non-empty"),
])
def test_a_bad_user_pattern_is_refused_naming_it(key, text, words):
    with pytest.raises(progformats.BadPattern) as e:
        progformats.check_pattern(key, text)
    assert words in str(e.value) and key in str(e.value)


def test_a_non_finite_loss_from_the_helper_is_named_for_status(tmp_path):
    import json

    from rgt.agent.progress import read_helper_progress
    from rgt.controller.commands.status import progress_line

    (tmp_path / "progress.json").write_text(json.dumps({"step": 7, "loss": None, "nonfinite": ["loss"],
                                                         "metrics": {}, "updated_at": 1.0}))
    p = read_helper_progress(str(tmp_path))
    assert p.metrics["nonfinite_loss"] == "non-finite" and progress_line(p) == "step 7  loss non-finite  (helper)"


def test_a_pattern_this_python_cannot_compile_falls_back_to_the_built_ins():
    lp = LogProgress("/nonexistent", {"step": "(?P<n", "loss": r"obj=(\S+)"})
    lp.feed("iter 3: loss 1.5000, time 1.00ms, mfu 1.00%", 0.0)
    assert lp.progress.step == 3 and lp.progress.loss is None  # the user's loss pattern still rules the loss


def test_hf_log_dicts_with_bare_numbers_read_the_same(tmp_path):
    # transformers 4 printed the same dicts with bare floats; the captured lines, unquoted
    import re

    lines = [line.split(b"\r")[-1] for line in fixture("hf_trainer").split(b"\n")]
    quoted = [line for line in lines if line.startswith(b"{'loss': '")]
    bare = b"\n".join(re.sub(rb"'(-?[\d.e+-]+|nan)'", rb"\1", line) for line in quoted) + b"\n"
    assert b"'loss': 3." in bare
    lp_q, _ = follow(tmp_path, b"\n".join(quoted) + b"\n", 1 << 20)
    lp_b, _ = follow(tmp_path, bare, 1 << 20)
    assert lp_b.progress.loss == lp_q.progress.loss == 3.899
    assert lp_b.progress.metrics == lp_q.progress.metrics


@pytest.mark.parametrize(("desc", "moves"), [
    ("Training", True), ("train", True), ("Steps", True), ("Training epoch 3", True), ("iteration", True),
    ("Validation DataLoader 0", False), ("Writing model shards", False), ("Map", False),
    ("Saving train state", False), ("model.safetensors", False), ("Evaluating", False), ("Tokenizing", False),
])
def test_a_bars_description_says_whether_it_is_the_training_bar(desc, moves):
    lp = LogProgress("/nonexistent")
    lp.feed(f"{desc}:  50%|#####     | 5/10 [00:01<00:01,  5.00it/s]", 0.0)
    assert (lp.progress.step == 5) is moves


def test_the_agent_reads_the_formats_under_python_3_8_from_the_archive(pyz, tmp_path):
    import subprocess

    from tests.conftest import require_real
    from tests.helpers import python_versions

    py38 = python_versions().get("3.8")
    require_real(py38 is not None, "no CPython 3.8 (pyenv) on this machine")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from rgt.agent.progress import LogProgress; "
            "lp = LogProgress(sys.argv[2]); lp.poll(0.0); p = lp.progress; print(p.step, p.total_steps, p.loss)")
    for name in ("hf_trainer", "lightning_tqdm"):
        out = subprocess.run([py38, "-I", "-c", code, pyz, os.path.join(FIXTURES, name + ".log")],
                             capture_output=True, text=True, timeout=120)
        step, total, loss, _ = TABLE[name]
        assert out.stdout.split() == [str(step), str(total), str(loss)], out.stderr
