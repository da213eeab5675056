"""The supervisor's state machine on the box: one checked transition method, restarts that follow the cause."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

from rgt.shared.journal import Journal
from rgt.shared.spec import RunSpec
from rgt.shared.states import POLICIES, FailureClass, RunState, check_transition
from rgt.shared.status import LastFailure

from .classify import Verdict

_S = RunState
PREEMPTION_CAP = 100  # preemptions cost no budget, but an endless loop still needs a bound


@dataclass
class SupervisorSpec:
    """The restart policy, in the style of TorchElastic's WorkerSpec."""

    max_restarts: int = 3
    start_grace_s: float = 60.0
    backoff_s: float = 5.0
    backoff_max_s: float = 300.0
    stop_timeout_s: float = 30.0
    stall_after_s: Optional[float] = None
    tick_s: float = 2.0
    attempt_timeout_s: Optional[float] = None  # a stage's or cell's own timeout

    @classmethod
    def from_run_spec(cls, spec: RunSpec) -> SupervisorSpec:
        """Take the policy fields of a RunSpec."""
        return cls(spec.max_restarts, spec.start_grace_s, spec.backoff_s, spec.backoff_max_s,
                   spec.stop_timeout_s, spec.stall_after_s, spec.tick_s)


class LaunchRefused(Exception):
    """The runner may not start the attempt (a GPU lease is held elsewhere, say); the message says why."""


class Ended(NamedTuple):
    """How one attempt ended, as the waiter recorded it."""

    attempt: int
    exit_code: Optional[int]
    signal: Optional[str]
    runtime_s: float


class Runner:
    """The seam between the state machine and processes: real (the waiter) or scripted in tests."""

    def start(self, attempt: int, resume_from: Optional[str]) -> None:
        """Launch attempt ``attempt``."""
        raise NotImplementedError

    def started(self) -> bool:
        """True once the trainer of the current attempt runs."""
        raise NotImplementedError

    def poll(self) -> Optional[Ended]:
        """The end of the current attempt, or None while it runs."""
        raise NotImplementedError

    def signal_stop(self, kill: bool) -> None:
        """SIGTERM (or SIGKILL) the tracked trainer group."""
        raise NotImplementedError


class Supervisor:
    """Drives a Runner through RunState; every change goes through ``transition``."""

    def __init__(
        self,
        sspec: SupervisorSpec,
        runner: Runner,
        journal: Journal,
        judge: Callable[[Ended, Optional[str]], Verdict],
        resume_from: Callable[[], Optional[str]] = lambda: None,
        on_transition: Callable[[RunState, RunState, str], None] = lambda a, b, r: None,
        on_retry: Callable[[Verdict], None] = lambda v: None,
        clock: Callable[[], float] = time.monotonic,
        on_launch: Callable[[int], None] = lambda attempt: None,
    ) -> None:
        self.sspec, self.runner, self.journal, self.judge = sspec, runner, journal, judge
        self.resume_from, self.on_transition, self.on_retry, self.clock = (
            resume_from, on_transition, on_retry, clock)
        self.on_launch = on_launch
        self.state = _S.UNKNOWN
        self.attempt = 0
        self.restarts = 0
        self.preemptions = 0
        self.class_counts: Dict[FailureClass, int] = {}
        self.last_failure: Optional[LastFailure] = None
        self.last_end: Optional[Ended] = None
        self.backoff_until: Optional[float] = None
        self.stop_reason: Optional[str] = None
        self.kill_at: Optional[float] = None
        self.stall_reason: Optional[str] = None
        self.forced: Optional[Tuple[FailureClass, str]] = None  # the agent ended the attempt for this cause
        self.last_progress: Optional[float] = None
        self.longest_step_s = 0.0
        self.final_reason = ""
        self.attempt_started = self.clock()

    # -- the one checked transition -------------------------------------------------------------
    def transition(self, new: RunState, reason: str) -> None:
        """Move to ``new``; illegal moves raise; every move is journaled as ``A -> B``."""
        old = self.state
        check_transition(old, new)
        self.state = new
        self.journal.append("transition", old=old.value, new=new.value, reason=reason, attempt=self.attempt)
        if new.terminal:
            self.final_reason = reason
        self.on_transition(old, new, reason)

    # -- inputs ---------------------------------------------------------------------------------
    def adopt(self, attempt: int, restarts: int, reason: str) -> None:
        """A restarted agent takes over a trainer that is still running."""
        self.attempt, self.restarts = attempt, restarts
        self.transition(_S.RUNNING, reason)  # UNKNOWN -> RUNNING

    def launch(self, reason: str) -> None:
        """Start the next attempt."""
        self.attempt += 1
        self.last_progress, self.stall_reason, self.kill_at, self.forced = None, None, None, None
        self.attempt_started = self.clock()
        self.transition(_S.STARTING, reason)  # UNKNOWN|BACKOFF -> STARTING
        # Every launch reads the target from what is recorded on disk now, and the journal names it.
        resume_from = self.resume_from()
        self.journal.append("launch", attempt=self.attempt, resume_from=resume_from)
        self.on_launch(self.attempt)
        try:
            self.runner.start(self.attempt, resume_from)
        except LaunchRefused as e:
            self.last_failure = LastFailure(None, str(e), None, time.time())
            self.transition(_S.FAILED, f"refused before start: {e}")  # STARTING -> FAILED

    def note_progress(self, now: float) -> None:
        """Progress or a new checkpoint arrived: the stall clock restarts."""
        if self.last_progress is not None:
            self.longest_step_s = max(self.longest_step_s, now - self.last_progress)
        self.last_progress = now

    def stop_for(self, failure: FailureClass, evidence: str) -> None:
        """End the attempt for a cause the agent saw (a NaN loss): whatever its exit code, it is ``failure``.

        SIGTERM to the group now, SIGKILL at the grace deadline, as for a stall.
        """
        if self.state not in (_S.STARTING, _S.RUNNING) or self.forced is not None or self.stop_reason:
            return
        self.forced = (failure, evidence)
        self.journal.append("forced_stop", attempt=self.attempt, evidence=evidence, **{"class": failure.value})
        self.runner.signal_stop(kill=False)
        self.kill_at = self.clock() + self.sspec.stop_timeout_s

    def request_stop(self, reason: str) -> None:
        """Stop on request: SIGTERM now, SIGKILL at one monotonic deadline."""
        if self.state.terminal or self.state == _S.STOPPING:
            return
        self.stop_reason = reason
        if self.state == _S.BACKOFF or self.state == _S.UNKNOWN:
            self.transition(_S.STOPPED, f"{reason}; no trainer was running")
            return
        self.transition(_S.STOPPING, reason)  # RUNNING|STARTING -> STOPPING
        self.runner.signal_stop(kill=False)
        self.kill_at = self.clock() + self.sspec.stop_timeout_s

    # -- the loop body --------------------------------------------------------------------------
    def stall_after_s(self) -> float:
        """Configured, or the larger of 10 min and 5x the longest step interval seen."""
        if self.sspec.stall_after_s is not None:
            return self.sspec.stall_after_s
        return max(600.0, 5 * self.longest_step_s)

    def step(self) -> None:
        """One tick: notice starts and ends, stalls, deadlines and backoff expiry."""
        now = self.clock()
        if self.state in (_S.STARTING, _S.RUNNING, _S.STOPPING):
            ended = self.runner.poll()
            if ended is not None:
                self._on_end(ended)
                return
            if self.state == _S.STARTING and self.runner.started():
                self.transition(_S.RUNNING, f"attempt {self.attempt} is running")  # STARTING -> RUNNING
            timeout = self.sspec.attempt_timeout_s
            if self.kill_at is not None and now >= self.kill_at:
                self.runner.signal_stop(kill=True)
                self.kill_at = None
            elif (timeout is not None and self.state == _S.RUNNING and self.stall_reason is None
                  and self.kill_at is None and now - self.attempt_started > timeout):
                self.stall_reason = f"timed out after {now - self.attempt_started:.0f}s (timeout_s {timeout:.0f})"
                self.journal.append("timeout", attempt=self.attempt, timeout_s=timeout)
                self.runner.signal_stop(kill=False)
                self.kill_at = now + self.sspec.stop_timeout_s
            elif (self.state == _S.RUNNING and self.stall_reason is None and self.kill_at is None
                  and self.last_progress is not None):
                quiet_s = now - self.last_progress
                if quiet_s > self.stall_after_s():
                    self.stall_reason = f"no progress for {quiet_s:.0f}s (limit {self.stall_after_s():.0f}s)"
                    self.journal.append("stall", attempt=self.attempt, quiet_s=quiet_s)
                    self.runner.signal_stop(kill=False)
                    self.kill_at = now + self.sspec.stop_timeout_s
        elif self.state == _S.BACKOFF and self.backoff_until is not None and now >= self.backoff_until:
            self.launch(f"backoff over; restart {self.restarts} of {self.sspec.max_restarts}")

    def _on_end(self, ended: Ended) -> None:
        self.last_end, self.kill_at = ended, None
        how = f"signal {ended.signal}" if ended.signal else f"exit code {ended.exit_code}"
        if self.stop_reason is not None:
            self.transition(_S.STOPPED, f"{self.stop_reason}; trainer ended with {how}")
            return
        verdict = self.judge(ended, self.stall_reason)
        if self.forced is not None:
            verdict = Verdict(self.forced[0], f"{self.forced[1]}; stopped by the agent, trainer ended with {how}")
        if verdict.failure is None:
            self.transition(_S.SUCCEEDED, f"trainer ended with {how}")
            return
        self.last_failure = LastFailure(verdict.failure.value, verdict.evidence, verdict.remediation, time.time())
        self.journal.append("failure", attempt=ended.attempt, **{"class": verdict.failure.value},
                            evidence=verdict.evidence)
        refusal = self._refusal(verdict.failure)
        if refusal:
            self.transition(_S.FAILED, f"{verdict.failure.value}: {verdict.evidence}; {refusal}")
            return
        self.on_retry(verdict)
        delay = self._backoff_s(verdict.failure)
        self.backoff_until = self.clock() + delay
        self.transition(_S.BACKOFF, f"{verdict.failure.value}: retrying in {delay:.0f}s")

    def _refusal(self, failure: FailureClass) -> Optional[str]:
        """Why this failure is not retried, or None to retry (and count it)."""
        policy = POLICIES[failure]
        seen = self.class_counts.get(failure, 0)
        if policy.retries == 0:
            return "not retried: the same config would fail the same way"
        if policy.retries is not None and seen >= policy.retries:
            return f"retried {seen} time(s) already"
        if not policy.costs_budget:
            if self.preemptions >= PREEMPTION_CAP:
                return f"preempted {self.preemptions} times"
            self.preemptions += 1
        elif self.restarts >= self.sspec.max_restarts:
            return f"restart budget of {self.sspec.max_restarts} used up"
        else:
            self.restarts += 1
        self.class_counts[failure] = seen + 1
        return None

    def _backoff_s(self, failure: FailureClass) -> float:
        if not POLICIES[failure].costs_budget:
            return min(self.sspec.backoff_s, self.sspec.backoff_max_s)
        return min(self.sspec.backoff_max_s, self.sspec.backoff_s * 2 ** max(0, self.restarts - 1))

    def summary(self) -> Dict[str, Any]:
        """Counters for status.json's trainer block."""
        return {"attempt": self.attempt, "restarts": self.restarts, "last_failure": self.last_failure}
