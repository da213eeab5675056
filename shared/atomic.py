"""Crash-safe file writes (temp, fsync, rename, fsync of the dir), used on the box and the laptop."""

from __future__ import annotations

import json
import os
from typing import Any


def fsync_dir(path: str) -> None:
    """Fsync a directory so a rename inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically.

    On any error (ENOSPC included) the previous file stays untouched, the temp file is removed and
    the error propagates.
    """
    import tempfile  # lazily: the status poll path imports this module but never writes

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def dumps_json(obj: Any) -> bytes:
    """Readable JSON bytes for files a person may open."""
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def atomic_write_json(path: str, obj: Any, mode: int = 0o644) -> None:
    """Atomically write ``obj`` as JSON."""
    atomic_write(path, dumps_json(obj), mode)


def read_json(path: str) -> Any:
    """Read a JSON file; raises OSError or ValueError."""
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))
