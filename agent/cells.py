"""Queues and stage chains on the box: cell dirs, the disk gate, the sync gate, setup's torch filter, GPU leases."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from rgt.shared.atomic import atomic_write_json, fsync_dir, read_json
from rgt.shared.manifest import sha256_file
from rgt.shared.paths import RunPaths
from rgt.shared.spec import RunSpec

TORCH_PIN = re.compile(r"^\s*(torch|torchvision|torchaudio)\s*($|[\[<>=!~;@ ])", re.IGNORECASE)
REQ_ARG = re.compile(r"(?P<flag>(?:^|\s)(?:-r|--requirement)(?:\s+|=))(?P<path>[^\s;&|]+)")


def cell_dir(paths: RunPaths, cell: Dict[str, Any]) -> str:
    """A cell's own output dir: runs/<id>/cells/<NN>-<name>."""
    return os.path.join(paths.root, "cells", f"{cell['index']:02d}-{cell['name']}")


class CellBook:
    """cells.json: each cell's state, exit code and class, so a restarted agent skips finished cells."""

    def __init__(self, paths: RunPaths, spec: RunSpec) -> None:
        self.path = os.path.join(paths.root, "cells.json")
        try:
            saved = {c["index"]: c for c in read_json(self.path).get("cells", [])}
        except (OSError, ValueError, AttributeError):
            saved = {}
        self.cells: List[Dict[str, Any]] = []
        for i, c in enumerate(spec.cells, 1):
            row = {"index": i, "name": c["name"], "state": "pending", "exit_code": None, "failure_class": None}
            if i < spec.from_cell:
                row["state"] = "skipped"
            row.update(saved.get(i, {}))
            self.cells.append(row)

    def set(self, index: int, **fields: Any) -> None:
        """Update one cell and persist."""
        self.cells[index - 1].update(fields)
        atomic_write_json(self.path, {"cells": self.cells})

    def next_pending(self) -> Optional[Dict[str, Any]]:
        """The first cell not yet finished or skipped."""
        return next((c for c in self.cells if c["state"] in ("pending", "running")), None)

    def failed(self) -> List[Dict[str, Any]]:
        """Cells that ended badly."""
        return [c for c in self.cells if c["state"] == "failed"]


# -- the disk gate -------------------------------------------------------------------------------------
class GateResult(NamedTuple):
    """Why a cell may not start (None when it may)."""

    refusal: Optional[str]


def disk_gate(spec: RunSpec, dirs: List[str]) -> GateResult:
    """Free bytes at least the floor and inode use below the limit, on every dir's filesystem."""
    floor = spec.disk_floor_bytes()
    seen = set()
    for d in dirs:
        try:
            st = os.statvfs(d)
            dev = os.stat(d).st_dev
        except OSError:
            continue
        if dev in seen:
            continue
        seen.add(dev)
        free = st.f_bavail * st.f_frsize
        if free < floor:
            return GateResult(f"{d}: {free} bytes free, below the floor of {floor} bytes "
                              f"(checkpoint size x retention + scratch): free space or use a bigger disk")
        if st.f_files:
            used_frac = 1.0 - st.f_favail / st.f_files
            if used_frac >= spec.max_inode_frac:
                return GateResult(f"{d}: {used_frac:.1%} of inodes used (limit {spec.max_inode_frac:.0%}): "
                                  f"delete or pack small files")
    return GateResult(None)


# -- the sync gate -------------------------------------------------------------------------------------
def sync_cell(src: str, durable_root: str, run_id: str, cell_name: str) -> Tuple[Optional[str], int]:
    """Copy a cell's outputs to the durable dir with fsync and check every hash.

    Returns (error or None, files copied). One retry of the copy is made before giving up.
    """
    dest = os.path.join(durable_root, "rgt", run_id, "cells", cell_name)
    error: Optional[str] = None
    for _ in range(2):
        try:
            return None, _copy_tree_verified(src, dest)
        except OSError as e:
            error = f"durable copy to {dest} failed: {e.strerror or e} ({getattr(e, 'filename', '') or dest})"
    return error, 0


def _copy_tree_verified(src: str, dest: str) -> int:
    n = 0
    os.makedirs(dest, exist_ok=True)
    for base, dirs, files in os.walk(src):
        dirs.sort()
        rel = os.path.relpath(base, src)
        target_dir = os.path.normpath(os.path.join(dest, rel))
        os.makedirs(target_dir, exist_ok=True)
        for name in sorted(files):
            s, t = os.path.join(base, name), os.path.join(target_dir, name)
            if os.path.islink(s):
                continue
            tmp = t + ".rgt-tmp"
            with open(s, "rb") as fi, open(tmp, "wb") as fo:
                shutil.copyfileobj(fi, fo, 4 * 1024 * 1024)
                fo.flush()
                os.fsync(fo.fileno())
            os.replace(tmp, t)
            if sha256_file(s) != sha256_file(t):
                raise OSError(f"hash mismatch after copying {s}")
            n += 1
        fsync_dir(target_dir)
    return n


# -- setup stage: keep the image's CUDA-matched torch ----------------------------------------------------
def filter_torch_requirements(command: str, cwd: str, out_dir: str) -> Tuple[str, List[str]]:
    """Rewrite ``-r FILE`` in a setup command to a copy of FILE without torch/vision/audio pins."""
    dropped: List[str] = []

    def repl(m: re.Match[str]) -> str:
        path = m.group("path")
        full = path if os.path.isabs(path) else os.path.join(cwd, path)
        try:
            with open(full, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            return m.group(0)
        kept = []
        for line in lines:
            if TORCH_PIN.match(line):
                dropped.append(line.strip())
                kept.append(f"# rgt: kept the image's torch, dropped: {line.strip()}")
            else:
                kept.append(line)
        os.makedirs(out_dir, exist_ok=True)
        digest = hashlib.sha256(full.encode()).hexdigest()[:8]
        filtered = os.path.join(out_dir, f"requirements-{digest}.txt")
        with open(filtered, "w", encoding="utf-8") as f:
            f.write("\n".join(kept) + "\n")
        return m.group("flag") + filtered

    return REQ_ARG.sub(repl, command), dropped


# -- GPU leases --------------------------------------------------------------------------------------------
class LeaseRefused(Exception):
    """A GPU this run asked for is held by another run on the box."""


def acquire_gpu_leases(box_root: str, gpus: List[int], run_id: str, shared: bool) -> List[int]:
    """Flock ``$RGT_ROOT/gpus/<i>.lock`` for each GPU: exclusive, or shared with --share-gpu.

    Returns the open fds; whoever holds them (agent, then waiter) holds the GPUs.
    """
    lease_dir = os.path.join(box_root, "gpus")
    os.makedirs(lease_dir, exist_ok=True)
    fds: List[int] = []
    try:
        for g in gpus:
            fd = os.open(os.path.join(lease_dir, f"{int(g)}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
            fds.append(fd)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 128, 0).decode(errors="replace").strip() or "another run"
                raise LeaseRefused(
                    f"GPU {g} is in use by {holder} on this box: pick other GPUs with --gpus, "
                    f"or let runs share it with --share-gpu") from None
            if not shared:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"run {run_id}".encode(), 0)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds
