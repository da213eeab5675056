"""The state machine driven by a scripted Runner: restarts follow the cause, budgets and backoff hold."""

from typing import List, Optional

import pytest

from rgt.agent.classify import Evidence, Verdict, classify
from rgt.agent.supervisor import Ended, Runner, Supervisor, SupervisorSpec
from rgt.shared.journal import Journal, read_journal
from rgt.shared.states import FailureClass, RunState


class ScriptedRunner(Runner):
    """Each attempt ends with the next scripted verdict as soon as it is polled."""

    def __init__(self) -> None:
        self.attempts: List[int] = []
        self.resumes: List[Optional[str]] = []
        self.signals: List[bool] = []
        self.running = False

    def start(self, attempt, resume_from):
        self.attempts.append(attempt)
        self.resumes.append(resume_from)
        self.running = True

    def started(self):
        return self.running

    def poll(self):
        if not self.running:
            return None
        self.polls = getattr(self, "polls", 0) + 1
        if self.polls % 2:
            return None  # seen running for one tick first
        self.running = False
        return Ended(self.attempts[-1], 1, None, 5.0)

    def signal_stop(self, kill):
        self.signals.append(kill)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(tmp_path, verdicts, **spec):
    clock = Clock()
    runner = ScriptedRunner()
    it = iter(verdicts)
    sup = Supervisor(SupervisorSpec(**spec), runner, Journal(str(tmp_path / "j")), lambda e, s: next(it),
                     resume_from=lambda: "ckpt/step_1.pt", clock=clock)
    return sup, runner, clock


def drive(sup, clock, max_ticks=100):
    for _ in range(max_ticks):
        if sup.state.terminal:
            return
        sup.step()
        clock.t += 1000.0  # past any backoff
    raise AssertionError("did not finish")


def v(cls):
    return Verdict(cls, f"evidence for {cls.value}" if cls else "exit code 0")


@pytest.mark.parametrize("cls", [FailureClass.OOM_HOST, FailureClass.OOM_CUDA, FailureClass.CONFIG_ERROR,
                                 FailureClass.NAN, FailureClass.GPU_FAULT])
def test_deterministic_failures_are_never_retried(tmp_path, cls):
    sup, runner, clock = make(tmp_path, [v(cls)], max_restarts=5)
    sup.launch("first start")
    drive(sup, clock)
    assert sup.state == RunState.FAILED
    assert runner.attempts == [1]
    assert sup.last_failure.class_ == cls.value


def test_crashes_retry_with_the_same_config_until_the_budget_is_used(tmp_path):
    sup, runner, clock = make(tmp_path, [v(FailureClass.CRASHED)] * 5, max_restarts=2)
    sup.launch("first start")
    drive(sup, clock)
    assert sup.state == RunState.FAILED and runner.attempts == [1, 2, 3]
    assert runner.resumes == ["ckpt/step_1.pt"] * 3
    assert "budget" in sup.final_reason


def test_preemption_costs_no_restart_budget(tmp_path):
    script = [v(FailureClass.PREEMPTED)] * 4 + [v(None)]
    sup, runner, clock = make(tmp_path, script, max_restarts=0)
    sup.launch("first start")
    drive(sup, clock)
    assert sup.state == RunState.SUCCEEDED and runner.attempts == [1, 2, 3, 4, 5] and sup.restarts == 0


def test_disk_full_is_retried_once(tmp_path):
    sup, runner, clock = make(tmp_path, [v(FailureClass.DISK_FULL)] * 3, max_restarts=5)
    sup.launch("first start")
    drive(sup, clock)
    assert runner.attempts == [1, 2] and sup.state == RunState.FAILED


def test_backoff_is_exponential_and_capped(tmp_path):
    sup, runner, clock = make(tmp_path, [v(FailureClass.CRASHED)] * 6, max_restarts=5, backoff_s=10,
                              backoff_max_s=35)
    sup.launch("first start")
    delays = []
    while not sup.state.terminal:
        sup.step()
        if sup.state == RunState.BACKOFF:
            delays.append(sup.backoff_until - clock.t)
            clock.t = sup.backoff_until
    assert delays == [10, 20, 35, 35, 35]


def test_every_transition_is_journaled_as_old_to_new(tmp_path):
    sup, runner, clock = make(tmp_path, [v(FailureClass.CRASHED), v(None)], max_restarts=1)
    sup.launch("first start")
    drive(sup, clock)
    moves = [(r["old"], r["new"]) for r in read_journal(str(tmp_path / "j")).records if r["kind"] == "transition"]
    assert moves == [("unknown", "starting"), ("starting", "running"), ("running", "backoff"),
                     ("backoff", "starting"), ("starting", "running"), ("running", "succeeded")]


def test_stop_during_backoff_stops_without_a_trainer(tmp_path):
    sup, runner, clock = make(tmp_path, [v(FailureClass.CRASHED)], max_restarts=3)
    sup.launch("first start")
    for _ in range(3):
        sup.step()
    assert sup.state == RunState.BACKOFF
    sup.request_stop("user")
    assert sup.state == RunState.STOPPED and runner.signals == []


def _ev(**kw):
    base = dict(exit_code=1, signal=None, runtime_s=100.0, tail=[], start_grace_s=60.0)
    base.update(kw)
    return Evidence(**base)


def test_classifier_reads_evidence_not_guesses():
    assert classify(_ev(exit_code=None, signal="SIGKILL", oom_kills_before=0, oom_kills_after=1)).failure \
        == FailureClass.OOM_HOST
    assert classify(_ev(exit_code=None, signal="SIGKILL", oom_kills_before=0, oom_kills_after=0)).failure \
        == FailureClass.CRASHED
    cuda = classify(_ev(tail=["step=2 loss=1.0", "torch.OutOfMemoryError: CUDA out of memory. Tried..."]))
    assert cuda.failure == FailureClass.OOM_CUDA and "step 2" in cuda.evidence and "optimizer" in cuda.evidence
    assert classify(_ev(runtime_s=1.0, tail=["KeyError: 'lr'"])).failure == FailureClass.CONFIG_ERROR
    assert classify(_ev(runtime_s=600.0, tail=["KeyError: 'lr'"])).failure == FailureClass.CRASHED
    assert classify(_ev(tail=["OSError: [Errno 28] No space left on device"], disk_free_bytes=0,
                        inodes_free=500)).failure == FailureClass.DISK_FULL
    assert classify(_ev(tail=["OSError: [Errno 28] No space left on device"], disk_free_bytes=10 ** 9,
                        inodes_free=0)).failure == FailureClass.INODE_FULL
    assert classify(_ev(exit_code=None, signal="SIGTERM")).failure == FailureClass.PREEMPTED
    assert classify(_ev(nan_seen=True)).failure == FailureClass.NAN


def test_exit_zero_after_a_traceback_is_not_success_without_completion_evidence():
    tail = ["Traceback (most recent call last):", '  File "x.py"', "ValueError: boom"]
    assert classify(_ev(exit_code=0, tail=tail)).failure == FailureClass.CRASHED
    assert classify(_ev(exit_code=0, tail=tail, completion_ok=True)).failure is None
    assert classify(_ev(exit_code=0, tail=["done"], completion_ok=False)).failure == FailureClass.CRASHED
    assert classify(_ev(exit_code=0, tail=["done"])).failure is None
