"""Checkpoint bytes on the box (agent): one-pass sha256 + durable copy, publishing, quarantine, the index file."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

from ...shared.atomic import atomic_write_json, fsync_dir, read_json

CHUNK = 4 << 20
INDEX_NAME = "ckpt_index.json"
INDEX_SCHEMA = 1


class Copied:
    """The result of hashing (and maybe copying) one checkpoint."""

    def __init__(self) -> None:
        self.sha256 = ""
        self.size_bytes = 0
        self.files: List[Dict[str, Any]] = []  # directory checkpoints: one entry per file
        self.copy_error: Optional[str] = None


def _hash_copy_file(src: str, dst: Optional[str], result: Copied) -> Tuple[str, int]:
    """Stream ``src`` once: hash it and, while the copy works, write it to ``dst`` and fsync."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    out = None
    if dst is not None and result.copy_error is None:
        try:
            out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            result.copy_error = f"{dst}: {e}"
    with open(src, "rb", buffering=0) as f:
        try:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        try:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                chunk = view[:n]
                h.update(chunk)
                size += n
                if out is not None:
                    try:
                        while chunk:
                            chunk = chunk[os.write(out, chunk):]
                    except OSError as e:  # the durable side failed (full, gone): keep hashing
                        result.copy_error = f"{dst}: {e}"
                        os.close(out)
                        out = None
            if out is not None:
                try:
                    os.fsync(out)
                except OSError as e:
                    result.copy_error = f"{dst}: {e}"
        finally:
            if out is not None:
                os.close(out)
    return h.hexdigest(), size


def hash_and_copy(src: str, is_dir: bool, dst: Optional[str]) -> Copied:
    """sha256 of a checkpoint (for a directory: of its sorted ``sha  relpath`` lines), copying it to ``dst``."""
    result = Copied()
    if not is_dir:
        result.sha256, result.size_bytes = _hash_copy_file(src, dst, result)
        return result
    lines = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        rel_root = os.path.relpath(root, src)
        if dst is not None and result.copy_error is None:
            try:
                os.makedirs(os.path.normpath(os.path.join(dst, rel_root)), exist_ok=True)
            except OSError as e:
                result.copy_error = f"{dst}: {e}"
        for name in sorted(names):
            full = os.path.join(root, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            rel = os.path.normpath(os.path.join(rel_root, name)).replace(os.sep, "/")
            target = None if dst is None else os.path.join(dst, rel)
            sha, size = _hash_copy_file(full, target, result)
            result.files.append({"rel": rel, "size_bytes": size, "sha256": sha,
                                 "mtime_ns": os.lstat(full).st_mtime_ns})
            result.size_bytes += size
            lines.append(f"{sha}  {rel}\n")
    if dst is not None and result.copy_error is None:
        for root, _dirs, _names in os.walk(dst):
            fsync_dir(root)
    result.sha256 = hashlib.sha256("".join(sorted(lines, key=lambda s: s[66:])).encode()).hexdigest()
    return result


def remove_path(path: str) -> None:
    """Remove a file or a directory tree; a vanished path is fine."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def publish(tmp: str, final: str) -> None:
    """Move a finished copy into place atomically (a directory replaces our older copy) and fsync the dir."""
    if os.path.isdir(final) and not os.path.islink(final):
        old = f"{final}.rgt-old.tmp"
        remove_path(old)
        os.rename(final, old)
        os.rename(tmp, final)
        remove_path(old)
    else:
        os.replace(tmp, final)
    fsync_dir(os.path.dirname(final))


def clean_temps(directory: str) -> None:
    """Remove our own temp copies a killed agent left in the durable dir (names only we use)."""
    for root, dirs, names in os.walk(directory):
        for n in dirs + names:
            if n.endswith((".rgt-copy.tmp", ".rgt-old.tmp")):
                remove_path(os.path.join(root, n))


def resolve_durable(durable_dir: Optional[str], run_id: str, ckpt_dir: str) -> Tuple[Optional[str], str]:
    """(``durable_dir/rgt/<run_id>``, why) when it exists and is another filesystem; else (None, why not)."""
    if not durable_dir:
        return None, "no durable_dir configured"
    try:
        d_dev = os.stat(durable_dir).st_dev
    except OSError as e:
        return None, f"durable dir {durable_dir} is not usable: {e.strerror}"
    if not os.path.isdir(durable_dir):
        return None, f"durable dir {durable_dir} is not a directory"
    try:
        same = d_dev == os.stat(ckpt_dir).st_dev
    except OSError as e:
        return None, f"checkpoint dir {ckpt_dir} is not usable: {e.strerror}"
    if same:
        return None, f"durable dir {durable_dir} is on the same filesystem as {ckpt_dir}: a copy would not survive"
    target = os.path.join(durable_dir, "rgt", run_id)
    try:
        os.makedirs(target, exist_ok=True)
    except OSError as e:
        return None, f"cannot create {target}: {e.strerror}"
    return target, f"verified checkpoints are copied to {target}"


def quarantine(path: str, qdir: str, reason: Dict[str, Any]) -> str:
    """Move a suspect checkpoint into ``qdir`` with ``<name>.reason.json`` beside it; never delete it."""
    os.makedirs(qdir, exist_ok=True)
    base = os.path.basename(path.rstrip("/"))
    dest, n = os.path.join(qdir, base), 1
    while os.path.lexists(dest) or os.path.lexists(dest + ".reason.json"):
        dest, n = os.path.join(qdir, f"{base}.{n}"), n + 1
    atomic_write_json(dest + ".reason.json", dict(reason, original_path=path, quarantined_at=time.time()))
    try:
        try:
            os.rename(path, dest)
        except OSError:
            shutil.move(path, dest)  # another filesystem: copy, then the original goes
    except OSError:
        remove_path(dest + ".reason.json")
        raise
    fsync_dir(qdir)
    return dest


def load_index(path: str) -> Dict[str, Dict[str, Any]]:
    """Records by key from ``ckpt_index.json``; empty when absent or unreadable."""
    try:
        doc = read_json(path)
    except (OSError, ValueError):
        return {}
    records = doc.get("records") if isinstance(doc, dict) else None
    return {r["key"]: r for r in records or [] if isinstance(r, dict) and isinstance(r.get("key"), str)}


def save_index(path: str, run_id: str, ckpt_dir: str, records: List[Dict[str, Any]]) -> None:
    """Atomically rewrite ``ckpt_index.json``."""
    atomic_write_json(path, {"schema": INDEX_SCHEMA, "run_id": run_id, "ckpt_dir": ckpt_dir,
                             "updated_at": time.time(), "records": records})
