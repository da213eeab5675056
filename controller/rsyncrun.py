"""Running rsync for a pull on the laptop: progress (bytes, rate, ETA) from --info=progress2, and --stats.

rsync never outlives rgt: it runs in its own process group, which is killed when the call ends by any
path (an exception, Ctrl-C, SIGTERM or SIGHUP turned into one). On Linux the kernel also signals the
moment rgt itself dies, even by kill -9 (PR_SET_PDEATHSIG, kept across exec): rsync gets SIGKILL, and a
small watcher sh gets SIGTERM and kills rsync's whole group, so the receiver rsync forks and its ssh go
too (a stalled box would otherwise leave them blocked on the network forever).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple, Optional

from rgt.shared.errors import RgtError

PROGRESS_RE = re.compile(rb"^\s*(\d+)\s+(\d+)%\s+(\S+/s)\s+(\d+:\d\d:\d\d)")
STAT_RE = re.compile(rb"^Total bytes (sent|received):\s*([\d,]+)", re.M)
QUIET_BELOW_BYTES = 16 << 20  # no progress lines in logs for small pulls


class RsyncRun(NamedTuple):
    """One rsync invocation: exit code, data bytes moved (from --stats) and the end of stderr."""

    rc: int
    data_bytes: Optional[int]
    err: str


def human(n: float) -> str:
    """Bytes for people: 912 B, 4.2 MB, 1.3 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


class Progress:
    """Bytes, rate and ETA: one redrawn line on a terminal, a plain line per 10 % otherwise."""

    def __init__(self, label: str, total_bytes: int, stream=None, already_bytes: int = 0) -> None:
        self.label, self.total = label, max(total_bytes, 1)
        self.already = already_bytes  # files rsync will skip: progress2 counts only what it sends
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_draw, self.last_decile = 0.0, -1

    def update(self, done_bytes: int, rate: str = "", eta: str = "") -> None:
        """Show progress, rate-limited."""
        done = min(self.already + done_bytes, self.total)
        pct = 100.0 * done / self.total
        line = f"{self.label}: {human(done)} / {human(self.total)} ({pct:.0f}%) {rate} ETA {eta}".rstrip()
        if self.tty:
            now = time.monotonic()
            if now - self.last_draw >= 0.2 or done >= self.total:
                self.stream.write("\r\x1b[K" + line)
                self.stream.flush()
                self.last_draw = now
        elif int(pct // 10) > self.last_decile and self.total >= QUIET_BELOW_BYTES:
            self.last_decile = int(pct // 10)
            self.stream.write(line + "\n")
            self.stream.flush()

    def done(self, complete: bool) -> None:
        """End the redrawn line; a finished transfer shows 100 %."""
        if complete:
            self.already = self.total
            self.update(0)
        if self.tty and self.last_draw:
            self.stream.write("\n")
            self.stream.flush()


PR_SET_PDEATHSIG = 1


def _prctl():
    """The prctl of libc, looked up in the parent (a dlopen between fork and exec could deadlock); None off Linux."""
    import sys as _sys

    if not _sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Sleeps until rgt dies (SIGTERM from the kernel), then kills rsync's process group "$1", then its own
# (dash's kill takes no "--").
WATCHER = 'trap "kill -KILL -$1; kill -KILL 0" TERM HUP; while :; do sleep 3600 & wait $!; done'


def _die_with_parent_fn(sig: int = signal.SIGKILL):
    prctl = _prctl()
    if prctl is None:
        return None

    def child() -> None:  # runs between fork and exec: one system call, nothing else
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return child


def _spawn(argv: list[str], **kw) -> tuple:
    """(rsync, watcher or None): rsync a direct child in its own group, dying with rgt."""
    if shutil.which(argv[0]) is None:
        raise RgtError("rsync is not installed on this machine: install it (apt-get install rsync)")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_parent_fn(), **kw)
    watch = _die_with_parent_fn(signal.SIGTERM)
    watcher = None
    if watch is not None:
        watcher = subprocess.Popen(["sh", "-c", WATCHER, "sh", str(proc.pid)], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=watch)
    return proc, watcher


def _reap(proc: subprocess.Popen, watcher: Optional[subprocess.Popen]) -> None:
    """Kill what is left of rsync's group, then the watcher (by SIGKILL: its trap must not run late)."""
    _kill_group(proc)
    proc.wait()
    if watcher is not None:
        _kill_group(watcher)  # the watcher and its sleep
        watcher.wait()


def _raise_interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_rsync(argv: list[str], progress: Optional[Progress]) -> RsyncRun:
    """Run rsync, feeding its progress2 lines to ``progress``; never leaves it running behind us."""
    import threading

    main = threading.current_thread() is threading.main_thread()
    with tempfile.TemporaryFile() as errf:
        old = {}
        if main:  # SIGTERM/SIGHUP end rgt through the finally below, which kills rsync's group first
            for sig in (signal.SIGTERM, signal.SIGHUP):
                old[sig] = signal.signal(sig, _raise_interrupt)
        try:
            proc, watcher = _spawn(argv, stdout=subprocess.PIPE, stderr=errf)
        except RgtError:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            raise
        out, buf = b"", b""
        try:
            while True:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out = (out + chunk)[-65536:]
                buf += chunk
                *parts, buf = re.split(rb"[\r\n]", buf)
                for part in parts:
                    m = PROGRESS_RE.match(part)
                    if m and progress is not None:
                        progress.update(int(m.group(1)), m.group(3).decode(), m.group(4).decode())
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            _reap(proc, watcher)  # rsync's own children (ssh, a local receiver) too
            proc.stdout.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)
        errf.seek(0)
        err = errf.read().decode(errors="replace").strip()
    stats = {k.decode(): int(v.replace(b",", b"")) for k, v in STAT_RE.findall(out)}
    data = max(stats.values()) if stats else None  # a pull's payload is the larger direction
    return RsyncRun(rc, data, err[-2000:])


def run_plain(argv: list[str], timeout_s: Optional[float] = None) -> subprocess.CompletedProcess:
    """Run a short rsync (the agent archive, code) with the same guarantee: it never outlives rgt."""
    proc, watcher = _spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        _reap(proc, watcher)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def last_line(err: str) -> str:
    """The last non-empty line of rsync's stderr."""
    lines = [x for x in err.splitlines() if x.strip()]
    return lines[-1] if lines else ""
