"""The trainer helper: two-phase atomic saves, load_latest, Young/Daly cadence, progress.json, SIGTERM."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from rgt.agent import helper
from rgt.agent.helper import CheckpointWriteError, Helper, daly_interval_s, young_interval_s
from tests.conftest import require_real, scaled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def visible(d) -> list:
    return sorted(n for n in os.listdir(d) if not n.startswith(".") and not n.endswith(".tmp"))


def test_young_and_daly_for_30s_cost_and_3h_mtbf():
    assert young_interval_s(30, 3 * 3600) == pytest.approx(805, abs=1)
    assert daly_interval_s(30, 3 * 3600) == pytest.approx(785, abs=1)


def test_daly_falls_back_to_the_mtbf_when_a_save_costs_more_than_twice_it():
    assert daly_interval_s(500, 200) == 200


def test_cadence_is_daly_rounded_down_to_whole_steps():
    clock = FakeClock()
    h = Helper(env={"RGT_MTBF_S": "10800"}, clock=clock)
    h.cadence.measured(30.0)
    for step in range(1, 5):
        h.should_save(step)
        clock.t += 2.0  # 2 s per step
    c = h.cadence.current()
    assert c["source"] == "daly"
    assert c["every_steps"] == 392  # 785.1 s / 2 s, rounded down


def test_save_every_override_counts_steps_from_the_last_save():
    clock = FakeClock()
    h = Helper(env={"RGT_SAVE_EVERY_S": "1.0"}, clock=clock)
    due = []
    for step in range(1, 12):
        due.append(h.should_save(step))
        if due[-1]:
            h.cadence.saved(step)
        clock.t += 0.3
    assert [s for s, d in zip(range(1, 12), due) if d] == [4, 7, 10]  # 1.0 s // 0.3 s = every 3 steps


def test_file_holds_the_values_as_of_save_even_when_tensors_change_right_after(tmp_path):
    h = Helper(env={"RGT_CKPT_DIR": str(tmp_path)})
    w = torch.arange(1 << 16, dtype=torch.float32)
    state = {"model": {"w": w}, "extra": [1, {"lr": 0.1}], "step": 7}
    path = h.save(state, 7, metrics={"loss": 0.5})
    w.add_(1.0)
    state["extra"][1]["lr"] = 99.0
    h.wait()
    got = torch.load(path, weights_only=True)
    assert torch.equal(got["model"]["w"], torch.arange(1 << 16, dtype=torch.float32))
    assert got["extra"] == [1, {"lr": 0.1}] and got["step"] == 7
    side = json.loads((tmp_path / ".step_000000007.pt.rgt.json").read_text())
    assert side["step"] == 7 and side["metrics"] == {"loss": 0.5} and side["save_cost_s"] > 0


def test_snapshot_buffers_are_reused_from_save_to_save(tmp_path):
    h = Helper(env={"RGT_CKPT_DIR": str(tmp_path)})
    w = torch.ones(1000)
    h.save({"w": w}, 1)
    first = h._snapshots._buffers[("w",)].data_ptr()
    w.mul_(3)
    h.save({"w": w}, 2)
    h.wait()
    assert h._snapshots._buffers[("w",)].data_ptr() == first
    assert torch.equal(torch.load(os.path.join(tmp_path, "step_000000001.pt"))["w"], torch.ones(1000))
    assert torch.equal(torch.load(os.path.join(tmp_path, "step_000000002.pt"))["w"], torch.full((1000,), 3.0))


def test_state_dict_metadata_survives_the_snapshot(tmp_path):
    model = torch.nn.BatchNorm1d(4)
    h = Helper(env={"RGT_CKPT_DIR": str(tmp_path)})
    h.wait()
    path = h.save(model.state_dict(), 1)
    h.wait()
    got = torch.load(path, weights_only=True)
    assert got._metadata == model.state_dict()._metadata
    torch.nn.BatchNorm1d(4).load_state_dict(got)


def test_disk_full_during_the_background_write_is_raised_on_the_next_save(tmpfs):
    d = tmpfs("small", "size=1m")
    h = Helper(env={"RGT_CKPT_DIR": d})
    h.save({"w": torch.zeros(1 << 20)}, 1)  # 4 MiB into a 1 MiB filesystem
    with pytest.raises(CheckpointWriteError):
        h.save({"w": torch.zeros(4)}, 2)
    assert os.listdir(d) == []  # no partial file under any name, no temp left behind
    h.save({"w": torch.zeros(4)}, 3)  # the error was handed over once; saving works again
    h.wait()
    assert visible(d) == ["step_000000003.pt"]


KILL_MID_WRITE = textwrap.dedent("""
    import os, signal, sys, time, torch
    from rgt.agent import helper
    state = {"w": torch.zeros(32 << 20)}  # 128 MiB: the write takes a while
    for step in (1, 2):
        state["w"].fill_(step)
        helper.save(state, step)
        helper.wait()
    state["w"].fill_(3.0)
    helper.save(state, 3)
    d = os.environ["RGT_CKPT_DIR"]
    deadline = time.monotonic() + 300  # a safety net only: the loop ends at the kill
    while time.monotonic() < deadline:
        tmps = [n for n in os.listdir(d) if n.endswith(".rgt.tmp")]
        try:
            started = tmps and os.path.getsize(os.path.join(d, tmps[0])) > 0
        except OSError:
            started = False
        if started and not os.path.exists(os.path.join(d, "step_000000003.pt")):
            print("killing mid-write", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    print("the write finished before the kill", flush=True)
    sys.exit(3)
""")


def test_kill_9_during_save_leaves_only_complete_checkpoints(tmp_path):
    d = tmp_path / "ckpt"
    env = dict(os.environ, RGT_CKPT_DIR=str(d), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", KILL_MID_WRITE], env=env, capture_output=True, text=True,
                       timeout=scaled(400))
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    assert "killing mid-write" in p.stdout
    assert visible(d) == ["step_000000001.pt", "step_000000002.pt"]
    assert glob.glob(os.path.join(d, ".step_000000003.pt.*.rgt.tmp"))  # the cut bytes sit under a temp name
    h = Helper(env={"RGT_CKPT_DIR": str(d)})
    latest = h.load_latest()
    assert h.loaded_path == os.path.join(d, "step_000000002.pt")
    assert bool((latest["w"] == 2.0).all())
    h.save({"w": torch.zeros(2)}, 4)  # the next trainer clears the dead writer's temp file
    h.wait()
    assert not glob.glob(os.path.join(d, "*.tmp")) and not glob.glob(os.path.join(d, ".*.tmp"))


def test_load_latest_skips_a_cut_checkpoint_and_prefers_resume_from(tmp_path):
    for step in (1, 2):
        torch.save({"step": step}, tmp_path / f"step_{step:09d}.pt")
    data = (tmp_path / "step_000000002.pt").read_bytes()
    (tmp_path / "step_000000003.pt").write_bytes(data[: len(data) // 2])
    assert Helper(env={"RGT_CKPT_DIR": str(tmp_path)}).load_latest() == {"step": 2}
    pinned = Helper(env={"RGT_CKPT_DIR": str(tmp_path), "RGT_RESUME_FROM": str(tmp_path / "step_000000001.pt")})
    assert pinned.load_latest() == {"step": 1}
    assert Helper(env={"RGT_CKPT_DIR": str(tmp_path / "none")}).load_latest() is None


def test_report_writes_progress_json_rate_limited_unless_the_phase_changes(tmp_path):
    clock = FakeClock()
    h = Helper(env={"RGT_STATUS_DIR": str(tmp_path), "RGT_RUN_ID": "r1"}, clock=clock)
    path = tmp_path / "progress.json"

    def read():
        return json.loads(path.read_text())

    h.report(1, loss=2.5, phase="train", total_steps=10, lr=0.1)
    doc = read()
    assert set(doc) == {"schema", "run_id", "pid", "step", "total_steps", "loss", "phase", "metrics", "nonfinite",
                        "updated_at", "save_cost_s", "cadence_s", "last_save_step", "preempted",
                        "last_save_path", "saves", "nonfinite_streak", "nonfinite_first_step"}
    assert (doc["step"], doc["total_steps"], doc["loss"], doc["metrics"]) == (1, 10, 2.5, {"lr": 0.1})
    clock.t += 0.1
    h.report(2, loss=2.4, phase="train")
    assert read()["step"] == 1  # rate-limited
    h.report(3, loss=2.3, phase="eval")
    assert read()["step"] == 3  # a phase change is written at once
    clock.t += 0.6
    h.report(4, loss=float("nan"), phase="eval")
    doc = read()
    assert doc["step"] == 4 and doc["loss"] is None and doc["nonfinite"] == ["loss"]
    assert not [n for n in os.listdir(tmp_path) if n != "progress.json"]


def test_sigterm_sets_preempted_and_chains_the_earlier_handler():
    seen = []
    old = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        h = Helper(env={})
        assert h.preempted() is False
        os.kill(os.getpid(), signal.SIGTERM)
        assert h.preempted() is True and seen == [signal.SIGTERM]
        assert h.should_save(5) is True  # one opportunistic save after SIGTERM
    finally:
        signal.signal(signal.SIGTERM, old)


def test_preemption_handler_is_not_installed_from_a_worker_thread():
    h = Helper(env={})
    out = []
    t = threading.Thread(target=lambda: out.append(h.install_preemption_handler()))
    t.start()
    t.join()
    assert out == [False]


def test_helper_imports_from_an_archive_under_python38_without_torch_or_vendored_deps(tmp_path):
    pkg = tmp_path / "rgt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    os.symlink(os.path.join(ROOT, "agent"), pkg / "agent")
    os.symlink(os.path.join(ROOT, "shared"), pkg / "shared")
    pythons = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3")))
    require_real(bool(pythons), "no CPython 3.8 under ~/.pyenv")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from rgt.agent import helper; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'msgpack', 'watchdog', 'pynvml')]; "
            "print(round(helper.daly_interval_s(30, 10800)), bad)")
    p = subprocess.run([pythons[-1], "-I", "-c", code, str(tmp_path)], capture_output=True, text=True,
                       timeout=scaled(120))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["785", "[]"]


def test_module_functions_use_one_helper_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(helper, "_instance", None)
    monkeypatch.setenv("RGT_CKPT_DIR", str(tmp_path))
    path = helper.save({"x": torch.ones(2)}, 3)
    helper.wait()
    assert path == os.path.join(tmp_path, "step_000000003.pt")
    assert torch.equal(helper.load_latest()["x"], torch.ones(2))
    assert helper.get() is helper.get()
    monkeypatch.setattr(helper, "_instance", None)


def test_sigusr1_asks_for_one_save_and_is_not_a_preemption(tmp_path, monkeypatch):
    import signal as _signal

    from rgt.agent import helper as helper_mod

    monkeypatch.setenv("RGT_CKPT_DIR", str(tmp_path))
    monkeypatch.setenv("RGT_SAVE_EVERY_S", "100000")
    h = helper_mod.Helper()
    old_term, old_usr1 = _signal.getsignal(_signal.SIGTERM), _signal.getsignal(_signal.SIGUSR1)
    try:
        assert h.preempted() is False  # arms the handlers
        h.should_save(1)
        _signal.raise_signal(_signal.SIGUSR1)
        assert h.should_save(2) is True
        assert h.should_save(3) is False, "one save per request"
        assert h.preempted() is False
    finally:
        _signal.signal(_signal.SIGTERM, old_term)
        _signal.signal(_signal.SIGUSR1, old_usr1)
