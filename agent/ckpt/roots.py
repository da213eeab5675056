"""Where the agent looks for checkpoints (agent, on the box): the checkpoint dir, the working dir, their scans.

Roots are the checkpoint dir ($RGT_CKPT_DIR: rgt's own ``ckpt/`` or the ``--ckpt-dir`` the user chose,
absolute ones included) and the trainer's working dir (the run's ``code/``). Keys of the checkpoint dir's
checkpoints are relative to it (as they always were); keys elsewhere are manifest paths (``code/out/x.pt``,
``abs/workspace/ckpt/x.pt``), so one index holds them all. Files uploaded with the code are not checkpoints:
a baseline of what matched at the first start is kept in the run dir and those files are skipped while
they stay unchanged.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from ...shared.atomic import atomic_write_json, read_json
from ...shared.paths import RunPaths, origin_path
from ...shared.spec import RunSpec
from .scan import Matcher, fingerprint, list_candidates

BASELINE_NAME = "ckpt_baseline.json"
# A root whose last full scan visited at most this many entries is listed every tick (as the checkpoint
# dir always was); a larger one (a big working tree) is listed again only after an event under it (at
# most every RESCAN_MIN_S), or every FULL_RESCAN_S as a safety net (POLL_RESCAN_S without inotify).
SMALL_ENTRIES = 2000
RESCAN_MIN_S = 5.0
FULL_RESCAN_S = 120.0
POLL_RESCAN_S = 15.0
SCAN_BUDGET = 200000  # entries per scan of one root: a dataset in the working dir must not cost a core

Candidates = Dict[str, Tuple[str, bool]]


class Root:
    """One watched directory and what its last scan found."""

    def __init__(self, path: str, prefix: str, kind: str) -> None:
        self.path = path  # absolute, symlinks resolved
        self.prefix = prefix  # "" for the checkpoint dir, else its manifest path plus "/"
        self.kind = kind  # "rgt" (rgt's own ckpt/), "user" (a --ckpt-dir), "code" (the working dir)
        self.skip: List[str] = []  # other roots (and the run dir) nested inside this one
        self.cands: Optional[Candidates] = None
        self.entries = 0
        self.truncated = False
        self.warned = False
        self.scanned_at = float("-inf")
        self.dirty = True

    @property
    def big(self) -> bool:
        """Whether a full listing is worth skipping between events."""
        return self.entries > SMALL_ENTRIES

    def due(self, now: float, inotify: bool) -> bool:
        """Whether to list this root again now."""
        if self.cands is None or not self.big:
            return True
        age = now - self.scanned_at
        if inotify:
            return (self.dirty and age >= RESCAN_MIN_S) or age >= FULL_RESCAN_S
        return age >= POLL_RESCAN_S

    def scan(self, matcher: Matcher, now: float) -> Optional[Candidates]:
        """List this root; keys carry the prefix. None (and the old result kept) when it is unreadable."""
        stats: Dict[str, int] = {}
        found = list_candidates(self.path, matcher, skip=self.skip, budget=SCAN_BUDGET, stats=stats)
        self.scanned_at, self.dirty = now, False
        if found is None:
            return None
        self.entries = stats.get("entries", 0)
        self.truncated = bool(stats.get("truncated"))
        self.cands = {self.prefix + k: v for k, v in found.items()}
        return self.cands


def _outside(base: str, path: str) -> bool:
    rel = os.path.relpath(path, base)
    return rel == ".." or rel.startswith("../")


def build_roots(spec: RunSpec, paths: RunPaths) -> List[Root]:
    """The checkpoint dir first, then the working dir (unless it is the same dir or turned off).

    A dir outside the run dir is named by its real path (its manifest path is ``abs/`` plus that path).
    """
    run = os.path.normpath(paths.root)
    primary = os.path.normpath(os.path.join(run, spec.ckpt_dir))
    if _outside(run, primary):
        primary = os.path.realpath(primary)
    own = os.path.normpath(spec.ckpt_dir) == "ckpt"
    roots = [Root(primary, "", "rgt" if own else "user")]
    if spec.extra.get("ckpt_watch_code", True):
        code = os.path.normpath(paths.code)
        if code != primary:
            roots.append(Root(code, origin_path(run, code) + "/", "code"))
    for r in roots:
        inner = [o.path for o in roots if o is not r] + [run, os.path.realpath(run)]
        r.skip = [p for p in inner if p != r.path and p.startswith(os.path.join(r.path, ""))]
    return roots


def load_baseline(paths: RunPaths) -> Optional[Dict[str, List[int]]]:
    """Map key -> [size, mtime_ns] of what matched in the working dir before the first launch; None if never taken."""
    try:
        doc = read_json(os.path.join(paths.root, BASELINE_NAME))
    except (OSError, ValueError):
        return None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict):
        return None
    return {k: v for k, v in files.items() if isinstance(v, list) and len(v) == 2}


def take_baseline(paths: RunPaths, roots: List[Root], matcher: Matcher, now: float) -> Dict[str, List[int]]:
    """The baseline of this run (taken once, at the first start, before the trainer ever ran)."""
    known = load_baseline(paths)
    if known is not None:
        return known
    files: Dict[str, List[int]] = {}
    for r in roots:
        if r.kind != "code":
            continue
        for key, (path, _is_dir) in (r.scan(matcher, now) or {}).items():
            fp = fingerprint(path)
            if fp is not None:
                files[key] = [fp.size, fp.mtime_ns]
    try:
        atomic_write_json(os.path.join(paths.root, BASELINE_NAME), {"files": files})
    except OSError:
        pass  # held in memory for this agent; a later agent takes it again (after launch: see decisions)
    return files


def uploaded(key: str, path: str, baseline: Dict[str, List[int]]) -> bool:
    """Whether this working-dir candidate is still the file that came with the code."""
    was = baseline.get(key)
    if was is None:
        return False
    fp = fingerprint(path)
    return fp is not None and [fp.size, fp.mtime_ns] == list(was)


def root_of(roots: List[Root], key: str) -> Root:
    """The root a key belongs to: the longest prefix that matches, else the checkpoint dir."""
    best = roots[0]
    for r in roots[1:]:
        if r.prefix and key.startswith(r.prefix) and len(r.prefix) > len(best.prefix):
            best = r
    return best


def collect(roots: List[Root], matcher: Matcher, baseline: Dict[str, List[int]], now: float, inotify: bool,
            event_paths: List[str]) -> Tuple[Candidates, List[Root]]:
    """Every root's candidates (a big root listed again only when due); and the roots that were unreadable."""
    for path in event_paths:
        for r in roots:
            if path.startswith(os.path.join(r.path, "")):
                r.dirty = True
    cands: Candidates = {}
    unreadable = []
    for r in roots:
        if r.due(now, inotify) and r.scan(matcher, now) is None:
            unreadable.append(r)
        for key, (path, is_dir) in (r.cands or {}).items():
            if r.kind == "code" and uploaded(key, path, baseline):
                continue  # it came with the code and is unchanged: not a checkpoint of this run
            cands.setdefault(key, (path, is_dir))
    return cands, unreadable


def progress_step(status_path: str) -> Optional[int]:
    """progress.step of the agent's last status.json (what it read from the log or the helper), if any."""
    try:
        doc = read_json(status_path)
    except (OSError, ValueError):
        return None
    step = (doc.get("progress") or {}).get("step") if isinstance(doc, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def describe(roots: List[Root]) -> List[str]:
    """status.json's checkpoint.watch_dirs: each root as the box names it."""
    return [r.path for r in roots]
