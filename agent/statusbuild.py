"""Assembles status.json on the box from the supervisor, progress, checkpoints and sentinels; judges ends."""

from __future__ import annotations

import glob
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Set

from rgt.shared.paths import RunPaths
from rgt.shared.spec import RunSpec
from rgt.shared.states import FailureClass, RunState
from rgt.shared.status import Cell, Checkpoint, Cost, Progress, Sentinel, Status, Trainer

from . import launch, procs
from .ckptnotes import ckpt_warnings
from .classify import Evidence, Verdict, classify
from .nanwatch import NanWatch, WatchedLog, exclude_after_nan, police
from .progress import read_helper_progress
from .runner import read_record
from .supervisor import Ended

log = logging.getLogger("rgt.agent")


class StatusBuilder:
    """Everything the daemon knows besides the state machine, and the one place status is built."""

    def __init__(self, paths: RunPaths, spec: RunSpec, version: str, incarnation: str,
                 previous: Optional[Status]) -> None:
        self.paths, self.spec, self.version, self.incarnation = paths, spec, version, incarnation
        self.previous = previous
        self.seq = previous.seq if previous else 0
        self.nan = NanWatch(spec.nan_after)
        self.logp = WatchedLog(self.nan, paths.trainer_log, spec.progress_patterns)
        self.attempt_started_at: Optional[float] = None  # wall time; older helper reports are the last attempt's
        self.progress = Progress()
        self.sup: Any = None
        self.pipeline: Any = None  # CheckpointPipeline, wired by the daemon when available
        self.sentinels: Any = None  # SentinelRunner, likewise
        self.alerts: Dict[str, Sentinel] = {}
        self.ended_attempts: Set[int] = set()
        self.new_incarnation = False
        self.gpu_fault: Optional[str] = None
        self.created_at = time.time()
        self.notifier: Any = None  # Notifier, when the spec asks for webhooks
        self.book: Any = None  # CellBook of a queue or stage chain
        self.final_state: Optional[RunState] = None
        self.heartbeat: Optional[Callable[[], None]] = None  # the daemon's status write, for long waits
        self.trainer_cgroup: Optional[tuple] = None  # (dir, version) of the trainer's memory cgroup
        self.oom_kills_before: Dict[str, Optional[int]] = {}

    # -- inputs ------------------------------------------------------------------------------------
    def poll_inputs(self, now_mono: float) -> None:
        """Read progress from the helper or the log; a change feeds the stall clock."""
        changed = self.logp.poll(time.time())
        self.nan.poll_helper(launch.helper_dir(self.paths), time.time())
        helper = read_helper_progress(launch.helper_dir(self.paths))
        if helper is not None and self._attempt_start() and (helper.updated_at or 0.0) < self._attempt_start():
            helper = None  # the previous attempt's last report: this attempt has not reported yet
        if helper is not None and "loss" in (helper.metrics.pop("_nonfinite", None) or ()):
            self.logp.nan_seen = True
        if helper is not None and (self.progress.source != "helper" or helper.updated_at != self.progress.updated_at):
            if helper.updated_at != self.progress.updated_at:
                changed = True
            self.progress = helper
        elif helper is None:
            self.progress = self.logp.progress
        if changed and self.sup is not None:
            self.sup.note_progress(now_mono)
        police(self.nan, self.sup, self.alerts)
        self._trainer_paused()
        self._sample_trainer_memory()

    def _attempt_start(self) -> Optional[float]:
        """When the current attempt started (wall clock): from our launch, or the adopted trainer's record."""
        if self.attempt_started_at is None and self.sup is not None and self.sup.attempt:
            rec = read_record(self.paths.trainer_record) or {}
            if rec.get("attempt") == self.sup.attempt:
                self.attempt_started_at = rec.get("started_at")
        return self.attempt_started_at

    def on_launch(self, attempt: int) -> None:
        """A new attempt starts: its progress, NaN count and warnings start from nothing."""
        self.attempt_started_at = time.time()
        self.progress = Progress()
        self.logp.progress = Progress()
        self.nan.reset()
        self.alerts.pop("nan", None)

    def _sample_trainer_memory(self) -> None:
        """Follow the trainer's memory cgroup (it may move itself) and note its oom_kill count at first sight."""
        from .sentinels.cgroup import find_dir
        from .sentinels.memory import read_memory

        rec = read_record(self.paths.trainer_record)
        if not rec or not procs.is_same_process(rec.get("pid"), rec.get("start_time")):
            return
        cg, version = find_dir("/proc", "/sys/fs/cgroup", "memory", "memory.usage_in_bytes|memory.current",
                               pid=str(rec["pid"]))
        if cg is None:
            return
        self.trainer_cgroup = (cg, version)
        if cg not in self.oom_kills_before:
            self.oom_kills_before[cg] = read_memory(cg_dir=cg, version=version)["oom_kills"]

    def _memory_evidence(self) -> Dict[str, Optional[int]]:
        from .sentinels.memory import read_memory

        if self.trainer_cgroup is None:
            return {}
        cg, version = self.trainer_cgroup
        r = read_memory(cg_dir=cg, version=version)
        return {"oom_kills_before": self.oom_kills_before.get(cg), "oom_kills_after": r["oom_kills"],
                "mem_peak_bytes": r["peak_bytes"],
                "mem_limit_bytes": r["limit_bytes"] if r["limit_source"] == "cgroup" else None}

    def _trainer_paused(self) -> None:
        """A trainer stopped by SIGSTOP or frozen by the cgroup freezer is a pause, not progress."""
        rec = read_record(self.paths.trainer_record)
        st = procs.proc_stat(rec["pid"]) if rec and rec.get("pid") else None
        frozen = st is not None and (st.state in ("T", "t") or _freezer_frozen(st.pid))
        if frozen:
            self.alerts["pause"] = Sentinel("pause", "warn", None, None,
                                            f"the trainer (pid {st.pid}) is paused (stopped or frozen)")
            if self.sup is not None:
                self.sup.last_progress = time.monotonic()  # a pause is not a stall
        elif self.alerts.get("pause") and "trainer" in (self.alerts["pause"].message or ""):
            del self.alerts["pause"]

    def on_alerts(self, alerts: List[Any]) -> None:
        """Act on what the sentinels report: the agent decides, the sentinels only tell."""
        fault = next((a for a in alerts if a.code == "gpu_fault"), None)
        self.gpu_fault = fault.message if fault is not None else None
        sup = self.sup
        if fault is not None and sup is not None and sup.state == RunState.RUNNING and sup.kill_at is None:
            # A dead GPU will not recover under this trainer: end it now, the classifier says why.
            sup.journal.append("gpu_fault", evidence=fault.message)
            sup.runner.signal_stop(kill=False)
            sup.kill_at = sup.clock() + sup.sspec.stop_timeout_s
        prune = [a for a in alerts if a.code == "prune_request"]
        if prune and self.pipeline is not None:
            self.pipeline.prune(prune[0].message or "disk critical")
        for a in alerts:
            if a.level == "critical" and self.notifier is not None:
                self.notifier.critical(a)

    def on_checkpoints(self, events: List[Dict[str, Any]], now_mono: float) -> None:
        """A newly verified checkpoint is progress too (a trainer with buffered stdout still advances)."""
        if any(e.get("kind") == "ckpt_verified" for e in events) and self.sup is not None:
            self.sup.note_progress(now_mono)
        rec = read_record(self.paths.trainer_record)
        running = bool(rec) and procs.is_same_process(rec.get("pid"), rec.get("start_time"))
        self.pipeline.set_trainer_running(running)

    def note_pause(self, gap_s: float) -> None:
        """The agent itself was frozen or suspended: ticks were missing for ``gap_s``."""
        msg = f"the agent was paused for {gap_s:.1f}s (box paused or preempted)"
        self.alerts["pause"] = Sentinel("pause", "warn", round(gap_s, 1), 3 * self.spec.tick_s, msg)
        if self.sup is not None:
            self.sup.journal.append("preempted", evidence=msg, gap_s=gap_s)
            self.sup.last_progress = time.monotonic()

    # -- judging an end ------------------------------------------------------------------------------
    def drain_checkpoints(self, timeout_s: float = 300.0) -> None:
        """The trainer ended: let its last checkpoints settle and verify before anything is decided.

        A retry then resumes from the newest one, and DONE never races a checkpoint still in flight.
        """
        pipeline = self.pipeline
        if pipeline is None:
            return
        pipeline.set_trainer_running(False)
        deadline = time.monotonic() + timeout_s
        pipeline.tick(time.monotonic())
        beat = time.monotonic()
        while pipeline.pending() and time.monotonic() < deadline:
            time.sleep(0.1)
            pipeline.tick(time.monotonic())
            if self.heartbeat is not None and time.monotonic() - beat >= self.spec.tick_s:
                beat = time.monotonic()
                self.heartbeat()  # a long final verify must not read as a dead (or paused) agent
        if pipeline.pending() and self.sup is not None:
            self.sup.journal.append("ckpt_drain_timeout", pending=pipeline.pending(), timeout_s=timeout_s)

    def judge(self, ended: Ended, stalled: Optional[str]) -> Verdict:
        """Gather the evidence for one ended attempt and classify it."""
        self.drain_checkpoints()
        self.logp.poll(time.time())
        self.nan.poll_helper(launch.helper_dir(self.paths), time.time())
        disk = _statvfs(launch.ckpt_dir(self.spec, self.paths)) or _statvfs(self.paths.root)
        completion_ok = None
        if self.spec.completion_files:
            completion_ok = all(glob.glob(os.path.join(self.paths.code, g)) for g in self.spec.completion_files)
        ev = Evidence(
            exit_code=ended.exit_code, signal=ended.signal, runtime_s=ended.runtime_s, tail=list(self.logp.tail),
            start_grace_s=self.spec.start_grace_s, disk_free_bytes=disk[0] if disk else None,
            inodes_free=disk[1] if disk else None, nan_seen=self.logp.nan_seen or self.nan.seen_any,
            step=self.progress.step, attempt=ended.attempt,
            gpu_fault=self.gpu_fault, new_incarnation=self.new_incarnation, stalled=stalled,
            completion_ok=completion_ok, **self._memory_evidence(),
        )
        new_incarnation, self.new_incarnation = self.new_incarnation, False
        self.trainer_cgroup = None
        self.oom_kills_before.clear()
        forced = getattr(self.sup, "forced", None)
        if forced is not None:
            exclude_after_nan(self.nan, self.pipeline, self._attempt_start(), self.spec.tick_s, self.sup)
            return Verdict(*forced)
        if ended.exit_code is None and ended.signal is None and not new_incarnation:
            if ev.disk_free_bytes == 0 or ev.inodes_free == 0:
                fc = FailureClass.INODE_FULL if ev.inodes_free == 0 else FailureClass.DISK_FULL
                return Verdict(fc, "the waiter could not record the exit: the disk is full")
            return Verdict(FailureClass.CRASHED, "the waiter vanished without recording the exit (killed?)")
        verdict = classify(ev)
        n, source = self.nan.streak()
        if verdict.failure is None and n:
            # Exit 0 with the loss still non-finite: it never recovered, however few reports came first.
            verdict = Verdict(FailureClass.NAN, f"exit code 0, but {self.nan.evidence(source)}")
        if verdict.failure == FailureClass.NAN:
            exclude_after_nan(self.nan, self.pipeline, self._attempt_start(), self.spec.tick_s, self.sup)
        if verdict.failure is None:
            error = self._sync_gate()
            if error:
                return Verdict(FailureClass.SYNC_FAILED, f"exit code 0, but {error}")
        return verdict

    def _sync_gate(self) -> Optional[str]:
        """A cell that exited 0 counts only once its outputs are durable (when a durable dir is set)."""
        index = getattr(self.sup.runner, "cell", None) if self.sup is not None else None
        if not self.spec.durable_dir or index is None:
            return None
        from .cells import cell_dir, sync_cell

        cell = dict(self.spec.cells[index - 1], index=index)
        src = cell_dir(self.paths, cell)
        error, _ = sync_cell(src, self.spec.durable_dir, self.spec.run_id, os.path.basename(src))
        return error

    def on_retry(self, verdict: Verdict) -> None:
        """Before a retry: a disk class first prunes what the agent owns."""
        if verdict.failure == FailureClass.PREEMPTED and self.notifier is not None:
            self.notifier.event("preempted", verdict.evidence)
        if verdict.failure in (FailureClass.DISK_FULL, FailureClass.INODE_FULL) and self.pipeline is not None:
            self.pipeline.prune(f"retrying after {verdict.failure.value}")
        self.logp.nan_seen = False

    def resume_from(self) -> Optional[str]:
        """The newest verified checkpoint, from the pipeline when it runs."""
        return self.pipeline.resume_from() if self.pipeline is not None else None

    # -- output --------------------------------------------------------------------------------------
    def build(self, now: float, final: Optional[RunState] = None) -> Status:
        """The status snapshot for this instant (``final``: the run's end, for the marker's copy)."""
        self.seq += 1
        sup = self.sup
        state = final or self.final_state or (sup.state if sup is not None else RunState.UNKNOWN)
        if final is None and self.final_state is None and state.terminal:
            # A cell ended but the run goes on (next cell), or the run ended and its marker is not yet
            # written: a terminal status must always find its marker beside it.
            state = RunState.STARTING if self.book is not None else RunState.STOPPING
        rec = read_record(self.paths.trainer_record) or {}
        trainer = Trainer(attempt=sup.attempt if sup else 0, restarts=sup.restarts if sup else 0,
                          last_failure=sup.last_failure if sup else None)
        live = state in (RunState.STARTING, RunState.RUNNING, RunState.STOPPING)
        if sup and live and rec.get("attempt") == sup.attempt:
            trainer.pid, trainer.start_time = rec.get("pid"), rec.get("start_time")
        if sup and sup.last_end is not None:
            trainer.exit_code, trainer.signal = sup.last_end.exit_code, sup.last_end.signal
        sentinels: List[Sentinel] = list(self.alerts.values())
        status = Status(
            run_id=self.spec.run_id, state=state.value, agent_version=self.version,
            incarnation=self.incarnation, agent_pid=os.getpid(), tick_s=self.spec.tick_s, updated_at=now,
            seq=self.seq, trainer=trainer, progress=self.progress, sentinels=sentinels,
            checkpoint=self._checkpoint(now),
            cost=self._cost(now),
            cells=[Cell(c["index"], c["name"], c["state"], c["exit_code"], c["failure_class"])
                   for c in (self.book.cells if self.book is not None else [])],
        )
        if self.sentinels is not None:
            extra, status.gpus, status.host = self.sentinels.snapshot()
            status.sentinels = extra + sentinels
        status.next_action = self._next_action(status, state)
        return status

    def _checkpoint(self, now: float) -> Checkpoint:
        """The pipeline's block plus one loud line for every checkpoint that is no resume target."""
        if self.pipeline is None:
            return Checkpoint()
        cp = self.pipeline.status(now)
        if hasattr(cp, "warnings"):
            cp.warnings = ckpt_warnings(self.pipeline.records(), self.spec.allow_pickle)
        return cp

    def _cost(self, now: float) -> Cost:
        rate = self.spec.usd_per_hour
        if rate is None:
            return Cost()
        start = self.spec.created_at or self.created_at
        return Cost(rate, round(rate * max(0.0, now - start) / 3600.0, 4))

    def _next_action(self, st: Status, state: RunState) -> str:
        p, rid = st.progress, self.spec.run_id
        if state == RunState.RUNNING:
            where = "no progress seen yet"
            if p.step is not None:
                where = f"step {p.step}" + (f" of {p.total_steps}" if p.total_steps else "")
            elif isinstance(p.loss, float) and p.loss == p.loss:
                where = f"loss {p.loss:.4g}, no step printed"  # a loss moving is progress too
            return f"training ({where}); watch with `rgt status {rid}`"
        if state == RunState.STARTING:
            return f"starting attempt {st.trainer.attempt}"
        if state == RunState.BACKOFF:
            lf = st.trainer.last_failure
            return f"restarting after {lf.class_ if lf else 'a failure'}; resumes from the newest verified checkpoint"
        if state == RunState.STOPPING:
            if self.sup is not None and self.sup.state.terminal:
                return "finishing: verifying the last checkpoints, then the completion marker"
            return "stopping: SIGTERM sent, SIGKILL at the grace deadline"
        if state == RunState.SUCCEEDED:
            return f"done: pull the results with `rgt pull {rid}`, then `rgt down {rid}`"
        if state == RunState.FAILED:
            lf = st.trainer.last_failure
            line = (lf.remediation if lf and lf.remediation else "see `rgt logs`") + f"; then `rgt resume {rid}`"
            if lf is not None and lf.class_ == FailureClass.NAN.value:
                target = st.checkpoint.resume_from
                line += (f"; it resumes from {target}, the newest checkpoint before the loss went non-finite"
                         if target else "; no finite checkpoint was saved, so a resume starts from scratch")
            return line
        if state == RunState.STOPPED:
            return f"stopped: `rgt resume {rid}` to continue, or `rgt pull {rid}`"
        return "agent is finding out what is on the box"

    def marker_extra(self) -> Dict[str, Any]:
        """Fields the marker carries besides the state (the checkpoint to resume from)."""
        return {"resume_from": self.resume_from()}


def _statvfs(path: str) -> Optional[tuple]:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return (st.f_bavail * st.f_frsize, st.f_favail)


def _freezer_frozen(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1] == "freezer" and parts[2] != "/":
            try:
                with open(f"/sys/fs/cgroup/freezer{parts[2]}/freezer.state") as f:
                    return f.read().strip() in ("FROZEN", "FREEZING")
            except OSError:
                return False
    return False
