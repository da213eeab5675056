"""The agent daemon on the box: one per run (flock), ticks, supervises, writes status, journal and markers."""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from rgt.shared.atomic import atomic_write, atomic_write_json
from rgt.shared.journal import Journal
from rgt.shared.paths import RunPaths
from rgt.shared.spec import RunSpec
from rgt.shared.states import RunState
from rgt.shared.status import Status, parse_status

from . import launch, procs
from .cells import CellBook, acquire_gpu_leases
from .ckpt.pipeline import CheckpointPipeline
from .runner import WaiterRunner, read_record
from .runplan import RunPlan, reopen
from .statusbuild import StatusBuilder
from .supervisor import Supervisor, SupervisorSpec

SAVE_REQUEST_HOLD_S = 60.0  # how long a SIGUSR1 waits for a trainer that can take it
MARKER_OF = {RunState.SUCCEEDED: "DONE", RunState.FAILED: "FAILED", RunState.STOPPED: "STOPPED"}
log = logging.getLogger("rgt.agent")


def agent_version() -> str:
    """The archive's sha12 (its file name), or "dev" when run from the installed package."""
    archive = launch.archive_path()
    return os.path.basename(archive)[:-4] if archive else "dev"


class LockHeld(Exception):
    """Another agent holds agent.lock; its pid is the message."""


def take_lock(paths: RunPaths) -> int:
    """Flock agent.lock for our life and write our pid; raise LockHeld naming the holder."""
    fd, holder = procs.try_flock(paths.lock)
    if fd is None:
        raise LockHeld(holder[0] if holder else "?")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {procs.start_time(os.getpid())}\n".encode(), 0)
    return fd


class Daemon(RunPlan):
    """Owns one run until it reaches a terminal state, or until it is told to go."""

    def __init__(self, paths: RunPaths, spec: RunSpec) -> None:
        self.paths, self.spec = paths, spec
        self.journal = Journal(paths.journal)
        self.incarnation = procs.incarnation()
        self.flags: Dict[str, bool] = {}
        self.agent_log_fd = os.open(paths.agent_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.runner = WaiterRunner(paths, self.agent_log_fd)
        if spec.gpus:
            box_root = os.path.dirname(os.path.dirname(paths.root))
            self.runner.lease_factory = lambda: acquire_gpu_leases(box_root, spec.gpus, spec.run_id, spec.share_gpu)
        self.builder = StatusBuilder(paths, spec, agent_version(), self.incarnation, self._previous_status())
        self.book = CellBook(paths, spec) if spec.cells else None
        self.builder.book = self.book
        self.cell: Optional[Dict[str, Any]] = None
        self.final: Optional[Tuple[RunState, str]] = None
        self.sup = self._new_supervisor(None, 0)
        self.builder.sentinels = self._build_sentinels()
        self.builder.pipeline = CheckpointPipeline(spec, paths, self.journal, log, launch.verify_argv_prefix(spec))
        self.builder.notifier = self._build_notifier()
        self.builder.heartbeat = self._heartbeat
        self.last_tick: Optional[float] = None
        self.save_request_at: Optional[float] = None  # SIGUSR1 not yet passed on to the trainer

    def _heartbeat(self) -> None:
        """Status written from inside a long wait; the tick clock moves on so no pause is inferred."""
        self.last_tick = time.monotonic()
        self.write_status()

    def _new_supervisor(self, cell: Optional[Dict[str, Any]], attempt: int) -> Supervisor:
        """One state machine per cell (or one for a plain run); attempts count on across cells."""
        sspec = SupervisorSpec.from_run_spec(self.spec)
        if cell is not None:
            sspec.attempt_timeout_s = self.spec.cells[cell["index"] - 1].get("timeout_s")
        sup = Supervisor(sspec, self.runner, self.journal, self.builder.judge,
                         resume_from=self.builder.resume_from, on_transition=self._on_transition,
                         on_retry=self.builder.on_retry, on_launch=self.builder.on_launch)
        sup.attempt = attempt
        self.sup = self.builder.sup = sup
        return sup

    def _build_notifier(self):
        if not self.spec.notify:
            return None
        from .notify import Notifier

        return Notifier(self.spec, self.paths, self.journal, log)

    def _build_sentinels(self):
        from .sentinels import build_sentinels

        dirs = {"run": self.paths.root, "ckpt": launch.ckpt_dir(self.spec, self.paths)}
        if self.spec.durable_dir:
            dirs["durable"] = self.spec.durable_dir
        hf = self.spec.env.get("HF_HOME")
        if hf:
            dirs["hf_cache"] = hf
        return build_sentinels(dirs, own_pids=self._tracked_pids, log=log)

    def _tracked_pids(self) -> List[int]:
        rec = read_record(self.paths.trainer_record) or {}
        return [p for p in (rec.get("waiter_pid"), rec.get("pid")) if p]

    def _previous_status(self) -> Optional[Status]:
        try:
            with open(self.paths.status, "rb") as f:
                return parse_status(f.read())
        except (OSError, ValueError):
            return None

    # -- signals: handlers only set flags; a self-pipe wakes the select --------------------------
    def _install_signals(self) -> int:
        r, w = os.pipe()
        os.set_blocking(w, False)
        os.set_blocking(r, False)
        signal.set_wakeup_fd(w)
        for sig, flag in ((signal.SIGCHLD, "child"), (signal.SIGUSR2, "wake"), (signal.SIGTERM, "term"),
                          (signal.SIGINT, "term"), (signal.SIGUSR1, "usr1")):
            signal.signal(sig, lambda s, f, flag=flag: self.flags.__setitem__(flag, True))
        signal.signal(signal.SIGHUP, lambda s, f: None)  # a handler, not SIG_IGN: children must not inherit it
        return r

    def forward_save_request(self) -> None:
        """SIGUSR1 (Slurm's --signal=B:USR1@lead) means "checkpoint now": pass it on to the trainer's group.

        Not when a member of the group would die of it (no handler): the request is held for a minute (the
        trainer may still be starting), then only journaled.
        """
        rec = self.runner.record() or {}
        pid, started, tag = rec.get("pid"), rec.get("start_time") or 0.0, f"RGT_AGENT_TAG={rec.get('tag')}".encode()
        doomed = procs.not_catching(pid, started, tag, signal.SIGUSR1) if pid else []
        sent = bool(pid) and not doomed and procs.signal_tracked(pid, started, tag, signal.SIGUSR1)
        if not sent and time.monotonic() - (self.save_request_at or 0.0) < SAVE_REQUEST_HOLD_S:
            return  # a trainer may be starting (no handler yet, or in backoff): try again next tick
        self.save_request_at = None
        why = None if sent else (f"pids {doomed} have no SIGUSR1 handler" if doomed else "no trainer running")
        self.journal.append("save_request", signal="SIGUSR1", forwarded=sent, reason=why)
        log.info("SIGUSR1: save request %s", "forwarded to the trainer" if sent else f"not forwarded: {why}")

    def job_ending(self) -> None:
        """The agent is a scheduler's batch job (RGT_JOB_SCHEDULER, set by its job script) and got SIGTERM.

        The job is ending (scancel, requeue, preemption, walltime) and Slurm signals only the batch shell
        before its SIGKILL: pass SIGTERM to the trainer so it can save, and wait out the grace for the
        waiter to record the end. Nothing is classified here: the next agent (a requeued job, `rgt resume`)
        reads the end under a new incarnation, as preempted.
        """
        if self.sup.state not in (RunState.STARTING, RunState.RUNNING, RunState.STOPPING):
            return
        self.runner.signal_stop(kill=False)
        deadline = time.monotonic() + self.spec.stop_timeout_s
        while self.runner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        self.journal.append("job_ending", attempt=self.sup.attempt, recorded=self.runner.poll() is not None)

    def _on_transition(self, old: RunState, new: RunState, reason: str) -> None:
        log.info("%s -> %s: %s", old.value, new.value, reason)
        self.write_status()

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until a terminal state (exit 0) or SIGTERM to the agent (exit 0, trainer untouched)."""
        wake_fd = self._install_signals()
        dropped = self.journal.repair()
        self.journal.append("agent_start", pid=os.getpid(), version=agent_version(),
                            incarnation=self.incarnation, journal_bytes_dropped=dropped)
        # The index and the durable dir first: the first launch of this agent must see what earlier
        # agents verified (resume is a property of the run, not of one agent's memory).
        self.builder.pipeline.start()
        self.begin()
        if self.final is None and self.sup.state.terminal:
            self._after_supervisor()
        while self.final is None:
            self._wait(wake_fd)
            if self.flags.pop("term", False):
                in_job = bool(os.environ.get("RGT_JOB_SCHEDULER"))
                if in_job:
                    self.job_ending()
                self.journal.append("agent_exit", reason="SIGTERM: the job is ending" if in_job else
                                    "SIGTERM to the agent; the trainer is left running")
                self.write_status()
                return 0
            if self.flags.pop("usr1", False):
                self.save_request_at = time.monotonic()
            if self.save_request_at is not None:
                self.forward_save_request()
            self.flags.pop("wake", None)
            self.flags.pop("child", None)
            try:
                self.tick()
                if self.sup.state.terminal:
                    self._after_supervisor()
            except OSError as e:
                # A full disk or a vanished file must not end supervision: log it, try again next tick.
                log.error("tick failed: %s; retrying at the next tick", e)
        self.finish()
        return 0

    def close(self) -> None:
        """Release NVML, the checkpoint watcher and files."""
        self.builder.sentinels.close()
        self.builder.pipeline.close()

    def linger(self) -> None:
        """Give pending notifications a bounded last chance (the journal keeps the rest)."""
        if self.builder.notifier is not None:
            self.builder.notifier.close()
        os.close(self.agent_log_fd)

    def _wait(self, wake_fd: int) -> None:
        timeout = self.spec.tick_s
        if self.sup.kill_at is not None:
            timeout = min(timeout, max(0.0, self.sup.kill_at - time.monotonic()))
        if self.flags:
            timeout = 0
        try:
            ready, _, _ = select.select([wake_fd], [], [], timeout)
        except InterruptedError:
            ready = []
        if ready:
            try:
                while os.read(wake_fd, 512):
                    pass
            except BlockingIOError:
                pass

    def tick(self) -> None:
        """Poll everything once and write status."""
        now = time.monotonic()
        if self.last_tick is not None and now - self.last_tick > 3 * self.spec.tick_s + 1:
            self.builder.note_pause(now - self.last_tick)
        self.last_tick = now
        if os.path.exists(self.paths.stop_request) and self.sup.stop_reason is None:
            req = read_record(self.paths.stop_request) or {}
            self.sup.request_stop(req.get("reason") or "stop requested")
        self.builder.poll_inputs(now)
        self.builder.on_checkpoints(self.builder.pipeline.tick(now), now)
        self.builder.on_alerts(self.builder.sentinels.tick(now))
        self.sup.step()
        if self.sup.last_end is not None and self.sup.last_end.attempt not in self.builder.ended_attempts:
            self.builder.ended_attempts.add(self.sup.last_end.attempt)
            self.journal.append("attempt_end", attempt=self.sup.last_end.attempt,
                                exit_code=self.sup.last_end.exit_code, signal=self.sup.last_end.signal)
        self.write_status()

    def write_status(self) -> None:
        """Atomic status write; a full disk keeps the previous file and the agent goes on."""
        try:
            atomic_write(self.paths.status, self.builder.build(time.time()).to_json())
        except OSError as e:
            log.warning("status.json not written (%s); the previous one stays", e)

    def finish(self) -> None:
        """Write the completion marker, then the final status: a terminal status always has its marker.

        Until now status showed "stopping" (a plain run) or "starting" (between cells); the last
        checkpoints were drained when the end was judged.
        """
        assert self.final is not None
        self.builder.drain_checkpoints()
        state, reason = self.final
        st = self.builder.build(time.time(), final=state)
        lf = self.sup.last_failure
        body: Dict[str, Any] = {
            "run_id": self.spec.run_id, "state": state.value, "reason": reason,
            "exit_code": st.trainer.exit_code, "signal": st.trainer.signal, "attempt": self.sup.attempt,
            "restarts": self.sup.restarts, "at": time.time(), "manifest_sha256": None,
            "failure": None if lf is None or state != RunState.FAILED else {
                "class": lf.class_, "evidence": lf.evidence, "remediation": lf.remediation},
        }
        body.update(self.builder.marker_extra())
        if self.book is not None:
            body["cells"] = self.book.cells
            body["failed_cells"] = [c["name"] for c in self.book.failed()]
        try:
            atomic_write_json(self.paths.marker(MARKER_OF[state]), body)
        except OSError as e:
            log.error("cannot write the %s marker: %s", MARKER_OF[state], e)
        self.journal.append("marker", name=MARKER_OF[state], state=state.value)
        self.builder.final_state = state
        self.write_status()
        if self.builder.notifier is not None:
            self.builder.notifier.final(state, reason, lf)


def main(paths: RunPaths, resume: bool = False) -> int:
    """`pyz daemon RUN_DIR`: exit 0 also when another agent holds the run or it already ended."""
    logging.basicConfig(
        filename=paths.agent_log, level=logging.INFO,
        format="%(asctime)s %(levelname)s pid=%(process)d %(message)s",
    )
    spec = RunSpec.load(paths.spec)
    try:
        lock_fd = take_lock(paths)
    except LockHeld as e:
        print(f"rgt agent: run {spec.run_id} is already supervised by agent pid {e}; nothing to do")
        return 0
    if resume:
        reopen(paths)  # only now, holding the lock: a lingering agent must not lose its marker to us
    marker = paths.existing_marker()
    if marker:
        print(f"rgt agent: run {spec.run_id} already ended ({marker}); nothing to do")
        return 0
    daemon = Daemon(paths, spec)
    try:
        return daemon.run()
    finally:
        daemon.close()
        os.close(lock_fd)  # before lingering for webhooks: `rgt resume` or a new agent may take the run now
        daemon.linger()
        sys.stdout.flush()
