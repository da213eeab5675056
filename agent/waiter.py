"""The waiter on the box: starts the trainer in its own session, owns its output, writes exit.json."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from typing import Dict, List, Optional

from rgt.shared.atomic import atomic_write_json
from rgt.shared.paths import RunPaths

from . import procs

READ_CHUNK = 64 * 1024
DRAIN_AFTER_EXIT_S = 2.0
RECORD_RETRY_S = 10.0  # trainer.json: the trainer is stopped if it cannot be tracked
EXIT_RETRY_S = 600.0  # exit.json: worth waiting for, the agent may free space meanwhile


class RotatingLog:
    """Append-only log file rotated by size into ``.1`` ... ``.N``; the waiter is its only writer."""

    def __init__(self, path: str, max_bytes: int, keep: int) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        """Write, rotating first when the file would pass its size."""
        if self.size and self.size + len(data) > self.max_bytes:
            self._rotate()
        try:
            os.write(self.fd, data)
            self.size += len(data)
        except OSError:
            # A full disk must not kill the waiter: exit.json is what matters; the bytes are lost.
            pass

    def _rotate(self) -> None:
        os.close(self.fd)
        # trainer.log -> .1 -> .2 ... -> .keep; the oldest falls off.
        for i in range(self.keep, 0, -1):
            src = self.path if i == 1 else f"{self.path}.{i - 1}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i}")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
        self.size = 0

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)


def _ignore(signum: int, frame: object) -> None:
    """Stay alive: only the trainer's end may end the waiter."""


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def run(paths: RunPaths, argv: List[str], env: Dict[str, str], cwd: str, attempt: int,
        log_max_bytes: int, log_keep: int, cell: Optional[int] = None) -> int:
    """Start the trainer, pump its output into the log, and record how it ended.

    The waiter shrugs off SIGTERM/SIGINT/SIGHUP: it must stay to record the trainer's end; the trainer
    gets its own signals from whoever sends them. A no-op handler rather than SIG_IGN, because an
    ignored disposition would be inherited across exec and the trainer could not be stopped.
    """
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    os.makedirs(paths.logs, exist_ok=True)
    log = RotatingLog(paths.trainer_log, log_max_bytes, log_keep)
    incarnation = procs.incarnation()
    started_at = time.time()
    try:
        child = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            # Restore default dispositions so the trainer can be stopped with SIGTERM.
            restore_signals=True,
        )
    except OSError as e:
        log.write(f"rgt: cannot start {argv[0]!r}: {e}\n".encode())
        _record(paths.exit, {
            "attempt": attempt, "pid": None, "exit_code": 127, "signal": None, "started_at": started_at,
            "ended_at": time.time(), "incarnation": incarnation, "error": str(e),
        }, EXIT_RETRY_S)
        return 0
    tracked = _record(paths.trainer_record, {
        "attempt": attempt, "pid": child.pid, "pgid": child.pid, "start_time": procs.start_time(child.pid),
        "waiter_pid": os.getpid(), "waiter_start_time": procs.start_time(os.getpid()),
        "incarnation": incarnation, "tag": env.get("RGT_AGENT_TAG"), "started_at": started_at, "cell": cell,
    }, RECORD_RETRY_S)
    if not tracked:
        # An untracked trainer could run beside the next attempt's: it must not live on.
        os.killpg(child.pid, signal.SIGKILL)
        log.write(b"rgt: trainer.json could not be written (disk full?): the trainer was stopped\n")
    _pump(child, log)
    rc = child.wait()
    log.close()
    _record(paths.exit, {
        "attempt": attempt, "pid": child.pid,
        "exit_code": rc if rc >= 0 else None,
        "signal": _signal_name(-rc) if rc < 0 else None,
        "started_at": started_at, "ended_at": time.time(), "incarnation": incarnation,
    }, EXIT_RETRY_S)
    return 0


def _pump(child: subprocess.Popen, log: RotatingLog) -> None:
    """Copy the trainer's output to the log until EOF, or shortly after the trainer itself ended.

    A background child (tensorboard, ``cmd &``) may hold the pipe open forever: the trainer's own end
    is what counts, so reading stops ``DRAIN_AFTER_EXIT_S`` after it.
    """
    assert child.stdout is not None
    out = child.stdout.fileno()
    leader_gone_at: Optional[float] = None
    while True:
        ready, _, _ = select.select([out], [], [], 0.5)
        if ready:
            data = os.read(out, READ_CHUNK)
            if not data:
                return
            log.write(data)
        if child.poll() is not None:
            now = time.monotonic()
            leader_gone_at = leader_gone_at or now
            if now - leader_gone_at > DRAIN_AFTER_EXIT_S:
                return


def _record(path: str, obj: Dict[str, object], retry_s: float) -> bool:
    """Write a record atomically, retrying while the disk is full (the agent prunes meanwhile)."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            atomic_write_json(path, obj)
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)


def _ends_mid_line(path: str) -> bool:
    """Whether the log's last byte is not a newline (an empty or absent log ends nothing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False


def main(paths: RunPaths, attempt: int, resume_from: Optional[str], lock_fd: Optional[int],
         cell_index: Optional[int] = None) -> int:
    """Entry point of `pyz waiter RUN_DIR`: build the trainer's env here, so secrets never travel."""
    from rgt.shared.spec import RunSpec

    from . import launch

    # lock_fd (waiter.lock) and any GPU lease fds stay open, unused, for the waiter's whole life: that
    # is what tells a restarted agent a waiter is alive. Popen(close_fds=True) keeps them from the trainer.
    del lock_fd
    spec = RunSpec.load(paths.spec)
    os.makedirs(paths.logs, exist_ok=True)
    notes: List[str] = []
    if cell_index is None:
        argv, env = spec.command, launch.trainer_env(spec, paths, attempt, resume_from, notes=notes)
    else:
        argv, env = launch.cell_launch(spec, paths, attempt, resume_from, cell_index, notes)
    with open(paths.trainer_log, "ab") as f:
        # The banner on its own line, even after an unfinished line (a tqdm bar ends in \r, not \n).
        f.write(b"\n" if _ends_mid_line(paths.trainer_log) else b"")
        f.write(launch.attempt_header(attempt).encode())
        for note in notes:
            f.write(f"rgt: {note}\n".encode())
    return run(paths, argv, env, paths.code, attempt, spec.log_max_bytes, spec.log_keep, cell_index)
