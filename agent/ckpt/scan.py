"""Finding checkpoints in the checkpoint dir (agent, on the box): globs, temp names, inotify events or polling."""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

MAX_DEPTH = 6  # e.g. logs/lightning_logs/version_0/checkpoints/epoch=0-step=9.ckpt is 5 deep
# Directories never searched: caches, environments and tool state, which can be huge and hold no checkpoint
# the trainer wrote (the Hugging Face hub cache's models--org--name dirs hold downloaded weights).
EXCLUDE_DIRS = frozenset({"__pycache__", "node_modules", "wandb", "venv", "site-packages", "mlruns",
                          "huggingface", "hub"})
EXCLUDE_GLOBS = ("models--*", "datasets--*", "spaces--*")
MODEL_WEIGHTS = ("model", "pytorch_model", "adapter_model", "diffusion_pytorch_model")


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


def _excluded(name: str) -> bool:
    return name in EXCLUDE_DIRS or any(fnmatch.fnmatchcase(name, g) for g in EXCLUDE_GLOBS)


def _model_dir(names: List[str], matcher: Matcher) -> bool:
    """A saved model folder (HF ``save_pretrained``: config.json beside model weights): it comes home whole."""
    return "config.json" in names and any(matcher.file(n) and n.startswith(MODEL_WEIGHTS) for n in names)


def list_candidates(root: str, matcher: Matcher, skip: Iterable[str] = (), budget: Optional[int] = None,
                    stats: Optional[Dict[str, int]] = None) -> Optional[Dict[str, Tuple[str, bool]]]:
    """Checkpoint keys (paths relative to ``root``, '/'-separated) to (absolute path, is_dir); None if unreadable.

    Matching directories are one checkpoint, and so is a saved model folder below ``root``; other
    directories are searched (not temp ones such as Hugging Face's ``tmp-checkpoint-N``, whose files would
    otherwise look like checkpoints, nor caches and tool dirs, nor the dirs in ``skip``). ``budget`` caps
    the entries visited; ``stats`` gets "entries" and "truncated".
    """
    found: Dict[str, Tuple[str, bool]] = {}
    skipped = set(skip)
    seen = [0, 0]  # entries visited, whether the budget cut the walk short

    def visit(directory: str, prefix: str, depth: int) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        seen[0] += len(entries)
        if prefix and _model_dir([e.name for e in entries], matcher):
            found[prefix.rstrip("/")] = (directory, True)
            return
        for e in entries:
            key = prefix + e.name
            try:
                if e.is_symlink():
                    continue
                if e.is_dir():
                    if matcher.directory(e.name):
                        found[key] = (e.path, True)
                    elif (depth < MAX_DEPTH and not is_temp_name(e.name) and not e.name.startswith("tmp")
                          and not _excluded(e.name) and e.path not in skipped):
                        if budget is not None and seen[0] >= budget:
                            seen[1] = 1
                            continue
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
    if stats is not None:
        stats["entries"], stats["truncated"] = seen
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
    Watches one root or several; events inside caches and tool dirs (.git, wandb, ...) are dropped.
    """

    def __init__(self, root: Any, log: logging.Logger, now: Callable[[], float] = time.time) -> None:
        self.roots: List[str] = [root] if isinstance(root, str) else list(root)
        self.root = self.roots[0]
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
            for root in self.roots:
                if os.path.isdir(root):  # a root made later is listed by the scan (it starts small)
                    observer.schedule(Handler(), root, recursive=True, event_filter=kinds)
            observer.daemon = True
            observer.start()
        except (OSError, RuntimeError, ValueError) as e:
            self.reason = f"inotify unavailable ({e})"
            return
        self._observer = observer
        self.mode, self.reason = "inotify", type(observer).__name__

    def _event(self, event: Any) -> None:
        t = self._now()
        path = os.fsdecode(event.dest_path if event.event_type == "moved" else event.src_path)
        if not path or any(p in EXCLUDE_DIRS or p in (".git", ".venv") for p in path.split(os.sep)):
            return
        with self._lock:
            if event.event_type == "moved":
                self._renamed[path] = t
            elif path not in self.roots:
                self._written[path] = t

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


def key_of(root: str, path: str, keys: Dict[str, Any], prefix: str = "") -> Optional[str]:
    """The candidate key a path belongs to: itself, or the checkpoint directory that holds it."""
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    if rel.startswith(".."):
        return None
    parts = (prefix + rel).split("/")
    for i in range(len(parts), 0, -1):
        k = "/".join(parts[:i])
        if k in keys:
            return k
    return None
