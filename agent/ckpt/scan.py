"""Finding checkpoints in the checkpoint dir (agent, on the box): globs, temp names, inotify events or polling."""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

MAX_DEPTH = 4


class Fingerprint(NamedTuple):
    """What changes when a checkpoint is rewritten: bytes, newest mtime, inode, file count."""

    size: int
    mtime_ns: int
    ino: int
    files: int


def fingerprint(path: str) -> Optional[Fingerprint]:
    """The fingerprint of a regular file or a directory tree; None for symlinks and vanished paths."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode):
        return Fingerprint(st.st_size, st.st_mtime_ns, st.st_ino, 1)
    if not stat.S_ISDIR(st.st_mode):
        return None
    size, mtime, files = 0, st.st_mtime_ns, 0
    for root, dirs, names in os.walk(path):
        for n in dirs + names:
            try:
                s = os.lstat(os.path.join(root, n))
            except OSError:
                continue
            mtime = max(mtime, s.st_mtime_ns)
            if stat.S_ISREG(s.st_mode):
                size, files = size + s.st_size, files + 1
    return Fingerprint(size, mtime, st.st_ino, files)


def is_temp_name(name: str) -> bool:
    """Names a writer uses before its rename: hidden or ``*.tmp``."""
    return name.startswith(".") or name.endswith(".tmp")


class Matcher:
    """The spec's checkpoint globs: ``*.pt`` matches files, ``checkpoint-*/`` matches directories."""

    def __init__(self, globs: List[str]) -> None:
        self.file_globs = [g for g in globs if not g.endswith("/")]
        self.dir_globs = [g.rstrip("/") for g in globs if g.endswith("/")]

    def file(self, name: str) -> bool:
        """A file name that is a checkpoint."""
        return not is_temp_name(name) and any(fnmatch.fnmatchcase(name, g) for g in self.file_globs)

    def directory(self, name: str) -> bool:
        """A directory name that is one checkpoint as a whole."""
        return not is_temp_name(name) and any(fnmatch.fnmatchcase(name, g) for g in self.dir_globs)


def list_candidates(root: str, matcher: Matcher) -> Optional[Dict[str, Tuple[str, bool]]]:
    """Checkpoint keys (paths relative to ``root``, '/'-separated) to (absolute path, is_dir); None if unreadable.

    Matching directories are one checkpoint; other directories are searched (not temp ones such as
    Hugging Face's ``tmp-checkpoint-N``, whose files would otherwise look like checkpoints).
    """
    found: Dict[str, Tuple[str, bool]] = {}

    def visit(directory: str, prefix: str, depth: int) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        for e in entries:
            key = prefix + e.name
            try:
                if e.is_symlink():
                    continue
                if e.is_dir():
                    if matcher.directory(e.name):
                        found[key] = (e.path, True)
                    elif depth < MAX_DEPTH and not is_temp_name(e.name) and not e.name.startswith("tmp"):
                        visit(e.path, key + "/", depth + 1)
                elif e.is_file() and matcher.file(e.name):
                    found[key] = (e.path, False)
            except OSError:
                continue

    try:
        os.scandir(root).close()
    except OSError:
        return None
    visit(root, "", 1)
    return found


def open_for_write(path: str) -> bool:
    """Whether any process we can see holds ``path`` (or a file under it) open for writing."""
    target = os.path.realpath(path)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return False
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link != target and not link.startswith(target + "/"):
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    flags = next((int(line.split()[1], 8) for line in f if line.startswith("flags:")), 0)
            except (OSError, ValueError, IndexError):
                return True  # it is open; be safe and assume a writer
            if flags & (os.O_WRONLY | os.O_RDWR):
                return True
    return False


class Watcher:
    """inotify events through watchdog when it imports and starts; otherwise nothing (the scan polls).

    Keeps, per absolute path, the last time it arrived by rename and the last time it was written.
    """

    def __init__(self, root: str, log: logging.Logger, now: Callable[[], float] = time.time) -> None:
        self.root = root
        self.log = log
        self._now = now
        self._lock = threading.Lock()
        self._renamed: Dict[str, float] = {}
        self._written: Dict[str, float] = {}
        self._observer: Any = None
        self.mode = "polling"
        self.reason = "not started"

    def start(self) -> None:
        """Start the observer; on any failure keep polling and say why."""
        try:
            from watchdog.events import (
                DirCreatedEvent,
                DirMovedEvent,
                FileClosedEvent,
                FileCreatedEvent,
                FileModifiedEvent,
                FileMovedEvent,
                FileSystemEventHandler,
            )
            from watchdog.observers import Observer
        except ImportError as e:
            self.reason = f"watchdog unavailable ({e})"
            return
        watcher = self

        class Handler(FileSystemEventHandler):  # type: ignore[misc,valid-type]
            def on_any_event(self, event: Any) -> None:
                watcher._event(event)

        kinds = [FileMovedEvent, DirMovedEvent, FileCreatedEvent, DirCreatedEvent, FileModifiedEvent,
                 FileClosedEvent]  # not "opened": our own reads must not look like writes
        try:
            observer = Observer()
            observer.schedule(Handler(), self.root, recursive=True, event_filter=kinds)
            observer.daemon = True
            observer.start()
        except (OSError, RuntimeError, ValueError) as e:
            self.reason = f"inotify unavailable ({e})"
            return
        self._observer = observer
        self.mode, self.reason = "inotify", type(observer).__name__

    def _event(self, event: Any) -> None:
        t = self._now()
        with self._lock:
            if event.event_type == "moved":
                if event.dest_path:
                    self._renamed[os.fsdecode(event.dest_path)] = t
            elif os.fsdecode(event.src_path) != self.root:
                self._written[os.fsdecode(event.src_path)] = t

    def take(self) -> Tuple[Dict[str, float], Dict[str, float]]:
        """(renamed, written) since the last call."""
        with self._lock:
            renamed, written = self._renamed, self._written
            self._renamed, self._written = {}, {}
        return renamed, written

    def stop(self) -> None:
        """Stop the observer thread."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None


def key_of(root: str, path: str, keys: Dict[str, Any]) -> Optional[str]:
    """The candidate key a path belongs to: itself, or the checkpoint directory that holds it."""
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    if rel.startswith(".."):
        return None
    parts = rel.split("/")
    for i in range(len(parts), 0, -1):
        k = "/".join(parts[:i])
        if k in keys:
            return k
    return None
