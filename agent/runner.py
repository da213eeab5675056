"""The real Runner on the box: launches the waiter (which launches the trainer) and reads what it records."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, Callable, Dict, Optional

from rgt.shared.atomic import read_json
from rgt.shared.paths import RunPaths

from . import launch, procs
from .cells import LeaseRefused
from .supervisor import Ended, LaunchRefused, Runner


def read_record(path: str) -> Optional[Dict[str, Any]]:
    """A JSON record written atomically by the waiter, or None."""
    try:
        d = read_json(path)
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


class WaiterRunner(Runner):
    """Starts `pyz waiter` in its own session and hands it waiter.lock, held for the waiter's whole life."""

    def __init__(self, paths: RunPaths, agent_log_fd: int) -> None:
        self.paths = paths
        self.agent_log_fd = agent_log_fd
        self.attempt = 0
        self.cell: Optional[int] = None  # the queue cell or stage being run (1-based), None for a plain run
        self.lease_fds: list = []  # GPU leases, handed to each waiter so they outlive a dead agent
        self.lease_factory: Optional[Callable[[], list]] = None
        self.proc: Optional[subprocess.Popen] = None
        self.lock_path = os.path.join(paths.root, "waiter.lock")

    # -- waiter liveness through its lock ---------------------------------------------------------
    def waiter_alive(self) -> bool:
        """True while some waiter of this run holds waiter.lock."""
        fd, _ = procs.try_flock(self.lock_path)
        if fd is None:
            return True
        os.close(fd)  # closing drops the lock we just took
        return False

    def reap(self) -> None:
        """Collect our own waiter child after SIGCHLD so no zombie is left."""
        if self.proc is not None and self.proc.poll() is not None:
            self.proc = None

    def record(self) -> Optional[Dict[str, Any]]:
        """trainer.json of the current attempt, if written yet."""
        rec = read_record(self.paths.trainer_record)
        return rec if rec and rec.get("attempt") == self.attempt else None

    # -- Runner -------------------------------------------------------------------------------------
    def start(self, attempt: int, resume_from: Optional[str]) -> None:
        """Spawn the waiter with the lock already held, so no restarted agent can start a second one."""
        self.attempt = attempt
        self.ensure_leases()
        fd = self._take_waiter_lock()
        try:
            argv = launch.self_argv("waiter", self.paths.root, "--attempt", str(attempt), "--lock-fd", str(fd))
            if resume_from:
                argv += ["--resume-from", resume_from]
            if self.cell is not None:
                argv += ["--cell", str(self.cell)]
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self.agent_log_fd, stderr=self.agent_log_fd,
                start_new_session=True, pass_fds=(fd, *self.lease_fds), cwd=self.paths.root,
            )
        finally:
            os.close(fd)

    def _take_waiter_lock(self, wait_s: float = 10.0) -> int:
        """waiter.lock for the new waiter; a previous waiter may take a moment to exit after exit.json."""
        deadline = time.monotonic() + wait_s
        while True:
            fd, _ = procs.try_flock(self.lock_path)
            if fd is not None:
                return fd
            if time.monotonic() > deadline:
                raise LaunchRefused("a waiter of this run is still alive; refusing to start a second trainer")
            time.sleep(0.05)

    def ensure_leases(self) -> None:
        """Hold this run's GPU leases (acquired once; an adopted waiter may still hold them)."""
        if self.lease_factory is not None and not self.lease_fds:
            try:
                self.lease_fds = self.lease_factory()
            except LeaseRefused as e:
                raise LaunchRefused(str(e)) from None

    def adopt(self, attempt: int) -> None:
        """Track an attempt started by an earlier agent."""
        self.attempt = attempt

    def started(self) -> bool:
        """The waiter wrote trainer.json for this attempt."""
        return self.record() is not None

    def poll(self) -> Optional[Ended]:
        """exit.json of this attempt, or an unknown end when the waiter died without writing it."""
        self.reap()
        ex = read_record(self.paths.exit)
        if ex and ex.get("attempt") == self.attempt:
            started, ended = ex.get("started_at") or 0.0, ex.get("ended_at") or 0.0
            return Ended(self.attempt, ex.get("exit_code"), ex.get("signal"), max(0.0, ended - started))
        if self.proc is not None or self.waiter_alive():
            return None
        rec = self.record()
        if rec and procs.is_same_process(rec.get("pid"), rec.get("start_time")):
            return None  # the waiter was killed but the trainer runs on: keep tracking it by pid
        return Ended(self.attempt, None, None, 0.0)

    def signal_stop(self, kill: bool) -> None:
        """Signal only the tracked trainer group (pid, start time and env tag checked)."""
        rec = self.record()
        if not rec or not rec.get("pid"):
            return
        sig = signal.SIGKILL if kill else signal.SIGTERM
        tag = f"RGT_AGENT_TAG={rec.get('tag')}".encode()
        procs.signal_tracked(rec["pid"], rec.get("start_time") or 0.0, tag, sig)
