"""The checkpoint index of one run (agent, on the box): records, retention, resume target, status block.

Owns ``ckpt_index.json`` in the run dir. Every method takes the lock; the worker thread writes records,
the daemon's thread reads them.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import statistics
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ...shared.paths import RunPaths, box_path, origin_path
from ...shared.spec import RunSpec
from ...shared.status import Checkpoint
from . import retention, store
from .scan import Fingerprint, fingerprint
from .snapshot import step_of

RESUMABLE = "verified"
PICKLE = "unverified_pickle"


def same(rec: Dict[str, Any], fp: Optional[Fingerprint]) -> bool:
    """Whether the bytes on disk are still the version this record describes."""
    return fp is not None and fp == Fingerprint(rec.get("size_bytes"), rec.get("mtime_ns"), rec.get("ino"),
                                                rec.get("file_count"))


def checks_line(rec: Dict[str, Any]) -> str:
    """How a resumable checkpoint was checked, for status: which files only their hash covers."""
    if rec.get("state") == PICKLE:
        return "unverified pickle: needs full unpickling; a resume target only because of --allow-pickle"
    hash_only = rec.get("hash_only") or []
    if hash_only:
        return f"verified; hash only (metadata, never unpickled): {', '.join(hash_only[:6])}"
    return "verified"


class RecordBook:
    """Index records by key: the path relative to the checkpoint dir, or the manifest path elsewhere."""

    def __init__(self, spec: RunSpec, paths: RunPaths, ckpt_dir: str, now: Callable[[], float] = time.time):
        self.spec, self.paths, self.ckpt_dir, self._now = spec, paths, ckpt_dir, now
        self.path = os.path.join(paths.root, store.INDEX_NAME)
        self.best_metric = retention.parse_best_metric(spec.extra.get("best_metric"))
        self.durable_keep_all = spec.extra.get("durable_keep") == "all"
        self.durable_dir: Optional[str] = None
        # "rgt" (our own ckpt/, rotated by default) or "user"/"code" (the user's folders); the pipeline sets it
        self.kind_of: Callable[[str], str] = lambda key: "rgt"
        self.lock = threading.RLock()
        self._records: Dict[str, Dict[str, Any]] = {}

    def load(self) -> None:
        """Read the index a previous agent left."""
        with self.lock:
            self._records = store.load_index(self.path)

    def save(self) -> None:
        """Atomically rewrite the index."""
        with self.lock:
            store.save_index(self.path, self.spec.run_id, os.path.abspath(self.ckpt_dir),
                             sorted(self._records.values(), key=retention.order_key))

    def resumable(self) -> Tuple[str, ...]:
        """States that may become RGT_RESUME_FROM."""
        return (RESUMABLE, PICKLE) if self.spec.allow_pickle else (RESUMABLE,)

    def rel(self, path: str) -> str:
        """The manifest path: relative to the run dir, or ``abs/<path>`` when it lies outside."""
        return origin_path(self.paths.root, path)

    def full(self, rec: Dict[str, Any]) -> str:
        """The box path of a record (older records: relative to the checkpoint dir, by key)."""
        path = rec.get("path")
        if isinstance(path, str) and path:
            return path if os.path.isabs(path) else box_path(self.paths.root, path)
        return os.path.join(self.ckpt_dir, rec["key"])

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        """A copy of one record."""
        with self.lock:
            rec = self._records.get(key)
            return copy.deepcopy(rec) if rec is not None else None

    def snapshot(self) -> Dict[str, Dict[str, Any]]:
        """A copy of every record by key."""
        with self.lock:
            return copy.deepcopy(self._records)

    def put(self, rec: Dict[str, Any]) -> None:
        """Record a new version of a checkpoint, keeping our good durable copy of the older one."""
        with self.lock:
            prior = self._records.get(rec["key"]) or {}
            rec["versions"] = int(prior.get("versions") or 0) + 1
            if rec["durable"] is None and prior.get("durable") and not prior.get("durable_pruned"):
                rec["durable"] = prior["durable"]
            self._records[rec["key"]] = rec
            self.save()

    def update(self, key: str, **fields: Any) -> None:
        """Change fields of one record and save."""
        with self.lock:
            self._records[key].update(fields)
            self.save()

    def mark_missing(self, present: Set[str], busy: Set[str], now: float) -> List[str]:
        """Flag records whose checkpoint vanished without us (e.g. the trainer's own rotation); returns paths.

        They count as pruned from then on: a pull finds them absent, which a pruned entry allows.
        """
        gone = []
        with self.lock:
            for key, rec in self._records.items():
                if key in present or key in busy or rec.get("pruned") or rec.get("quarantined"):
                    continue
                rec.update(missing=True, missing_at=now, pruned=True, pruned_at=now,
                           prune_reason="vanished: removed by the trainer or a person, not by rgt")
                gone.append(rec["path"])
            if gone:
                self.save()
        return gone

    def retain(self, reason: str, busy: Set[str], disk: bool = False) -> List[str]:
        """Delete what retention does not keep, among checkpoints we verified whose bytes are unchanged.

        rgt's own checkpoint dir keeps the last K plus the best. The user's folders (the working dir, a
        --ckpt-dir) keep everything unless --keep-last turned pruning on (then the newest K verified of
        each folder), or ``disk`` says the disk is past its act level (then the newest verified one).
        """
        removed = []
        with self.lock:
            # Only step-numbered checkpoints rotate: a trainer's own best.pt / final.pt / latest.pt has no
            # step in its name, and deleting it would lose the file it most wanted kept.
            live = [r for r in self._records.values() if r["state"] in self.resumable()
                    and not (r.get("pruned") or r.get("quarantined") or r.get("nan_suspect"))
                    and step_of(r["key"]) is not None]
            own = [r for r in live if self.kind_of(r["key"]) == "rgt"]
            keep = retention.keep_set(own, self.spec.keep_last, self.best_metric) if own else set()
            candidates = list(own)
            if disk or self.spec.prune_user_dirs:
                folders: Dict[str, List[Dict[str, Any]]] = {}
                for r in live:
                    if self.kind_of(r["key"]) != "rgt":
                        folders.setdefault(os.path.dirname(str(r.get("path") or r["key"])), []).append(r)
                for group in folders.values():
                    candidates += group
                    keep |= retention.keep_set(group, 1 if disk else self.spec.keep_last,
                                               None if disk else self.best_metric)
            for r in candidates:
                path = self.full(r)
                if r["key"] in keep or r["key"] in busy or not same(r, fingerprint(path)):
                    continue
                store.remove_path(path)
                if r.get("sidecar"):
                    store.remove_path(os.path.join(os.path.dirname(path), r["sidecar"]))
                durable = r.get("durable")
                if durable and not self.durable_keep_all and self._ours(durable["path"]):
                    store.remove_path(durable["path"])
                    r["durable_pruned"] = True
                r.update(pruned=True, pruned_at=self._now(), prune_reason=reason, pruned_by_rgt=True)
                removed.append(path)
            if removed:
                self.save()
        return removed

    def _ours(self, path: str) -> bool:
        return bool(self.durable_dir) and path.startswith(os.path.join(self.durable_dir or "", ""))

    def resume_from(self) -> Optional[str]:
        """Absolute path of the newest resumable checkpoint whose bytes are still the ones we verified.

        A checkpoint rewritten or cut in place falls back to our durable copy of it, else to an older one.
        """
        best: Optional[Tuple[Tuple[int, int, str], str]] = None
        for r in sorted(self.snapshot().values(), key=retention.order_key, reverse=True):
            if best is not None and retention.order_key(r) <= best[0]:
                break  # a durable copy is never newer than its record: nothing older can win
            if r.get("nan_suspect"):
                continue  # written after the loss went non-finite (the agent's NaN policy)
            path = self.full(r)
            cand = None
            if (r["state"] in self.resumable() and not (r.get("pruned") or r.get("quarantined"))
                    and same(r, fingerprint(path))):
                cand = (retention.order_key(r), path)
            elif self._durable_ok(r):  # our copy of the last good version, e.g. of a latest.pt cut in place
                d = r["durable"]
                cand = (retention.order_key(dict(r, mtime_ns=d["mtime_ns"], step=d.get("step"))), d["path"])
            if cand and (best is None or cand[0] > best[0]):
                best = cand
        return best[1] if best else None

    def _durable_ok(self, r: Dict[str, Any]) -> bool:
        d = r.get("durable")
        if not d or d.get("state") not in self.resumable() or r.get("durable_pruned"):
            return False
        if r.get("is_dir"):
            return os.path.isdir(d["path"])
        return os.path.isfile(d["path"]) and os.path.getsize(d["path"]) == d["size_bytes"]

    def records(self) -> List[Dict[str, Any]]:
        """Index records, oldest first (what the manifest is built from)."""
        return sorted(self.snapshot().values(), key=retention.order_key)

    def status(self, now: float) -> Checkpoint:
        """status.json's checkpoint block; ``warning`` is filled when the schema has that field."""
        ok = [r for r in self.records() if r["state"] in self.resumable() and not r.get("quarantined")]
        cp = Checkpoint()
        if ok:
            newest = ok[-1]
            cp.last_path, cp.last_step, cp.sha256 = newest["path"], newest.get("step"), newest["sha256"]
            cp.last_verified_at = newest.get("verified_at")
            cp.last_checks = checks_line(newest)
            cp.age_s = max(0.0, now - newest["mtime_ns"] / 1e9)
        times = [r["mtime_ns"] / 1e9 for r in ok[-6:]]
        if len(times) >= 2:
            cp.cadence_s = statistics.median(b - a for a, b in zip(times, times[1:]))
        resume = self.resume_from()
        cp.resume_from = self.rel(resume) if resume else None
        warning = self.warning()
        if warning and "warning" in {f.name for f in dataclasses.fields(cp)}:
            cp.warning = warning  # type: ignore[attr-defined]
        ours = [r for r in self.records() if r.get("pruned_by_rgt")]
        if ours:
            last = max(ours, key=lambda r: r.get("pruned_at") or 0)
            cp.pruned_count = len(ours)
            cp.last_pruned = f"{last['path']} ({last.get('prune_reason')})"
        return cp

    def warning(self) -> Optional[str]:
        """One loud line when the newest checkpoint is not a good resume target, else None."""
        recs = self.records()
        newest = recs[-1] if recs else None
        if newest is None:
            return None
        if newest["state"] in self.resumable():
            if newest.get("durable_error"):
                return f"durable copy of {newest['path']} failed: {newest['durable_error']}"
            return None
        if newest["state"] == PICKLE:
            return (f"UNVERIFIED PICKLE: {newest['path']} needs full unpickling; "
                    "not a resume target unless the run was started with `rgt up --allow-pickle`")
        where = f"; moved to {newest['quarantined']}" if newest.get("quarantined") else ""
        return f"newest checkpoint {newest['path']} is {newest['state']}: {newest['detail']}{where}"
