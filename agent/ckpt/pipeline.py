"""The agent's checkpoint pipeline (daemon thread plus one worker thread, on the box): find, verify, copy, keep.

The daemon calls ``tick(now)`` every tick. Scanning and event bookkeeping happen there (cheap); hashing,
verification, the durable copy, the index write, quarantine and pruning happen in one worker thread.
Every event is journaled here and also returned, for the daemon's status and log.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ...shared.journal import Journal
from ...shared.paths import RunPaths
from ...shared.spec import RunSpec
from ...shared.status import Checkpoint
from . import roots as roots_mod
from . import store
from .book import PICKLE, RESUMABLE, RecordBook, same
from .scan import Fingerprint, Matcher, Watcher, fingerprint, key_of, open_for_write
from .snapshot import step_of
from .worker import Job, process, retry_durable

DURABLE_RETRY_S = 60.0
RETRY_UNVERIFIABLE_S = 300.0
SUSPECT = ("corrupt", "nonfinite")
QUIET = ("ckpt_verified", "ckpt_pruned", "ckpt_watch", "ckpt_durable", "ckpt_durable_copied", "ckpt_changed",
         "ckpt_missing")


class _Seen:
    """A candidate not yet processed in its current version."""

    __slots__ = ("path", "is_dir", "fp", "changed_at", "renamed_at", "written_at", "queued")

    def __init__(self, path: str, is_dir: bool, fp: Fingerprint, now: float) -> None:
        self.path, self.is_dir, self.fp, self.changed_at = path, is_dir, fp, now
        self.renamed_at: Optional[float] = None
        self.written_at: Optional[float] = None
        self.queued = False


def _oldest_first(item: Tuple[str, _Seen]) -> Tuple[int, int, str]:
    step = step_of(item[0])  # mtimes tie within a kernel tick: the step in the name breaks the tie
    return (item[1].fp.mtime_ns, -1 if step is None else step, item[0])


def _ev(kind: str, **fields: Any) -> Dict[str, Any]:
    return dict(fields, kind=kind)


class CheckpointPipeline:
    """Watches the checkpoint dir and the working dir; turns complete checkpoints into verified, indexed ones."""

    def __init__(self, spec: RunSpec, paths: RunPaths, journal: Journal, log: logging.Logger,
                 verify_argv_prefix: List[str], now: Callable[[], float] = time.time) -> None:
        self.spec, self.paths, self.journal, self.log = spec, paths, journal, log
        self.verify_argv_prefix = list(verify_argv_prefix)
        self._now = now
        self.roots = roots_mod.build_roots(spec, paths)
        self.ckpt_dir = self.roots[0].path  # $RGT_CKPT_DIR; an absolute spec.ckpt_dir wins
        self.book = RecordBook(spec, paths, self.ckpt_dir, now)
        self.book.kind_of = self.kind_of
        self.matcher = Matcher(spec.ckpt_globs)
        self._baseline: Dict[str, List[int]] = {}
        self.verify_timeout_s = spec.extra.get("verify_timeout_s")
        self._seen: Dict[str, _Seen] = {}
        self._inflight: Set[str] = set()
        self._retry_at: Dict[str, float] = {}
        self._jobs: queue.Queue[Optional[Job]] = queue.Queue()
        self._results: queue.Queue[Tuple[str, List[Dict[str, Any]]]] = queue.Queue()
        self._pending_events: List[Dict[str, Any]] = []
        self._watcher = Watcher([r.path for r in self.roots], log, now)
        self._worker: Optional[threading.Thread] = None
        self._proc: Any = None
        self._trainer_running = True
        self._closing = threading.Event()

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the index, find the durable dir, start the watcher and the worker (idempotent)."""
        if self._worker is not None:
            return
        os.makedirs(self.ckpt_dir, exist_ok=True)
        self.book.load()
        self._baseline = roots_mod.take_baseline(self.paths, self.roots, self.matcher, self._now())
        durable, why = store.resolve_durable(self.spec.durable_dir, self.spec.run_id, self.ckpt_dir)
        self.book.durable_dir = durable
        if durable:
            store.clean_temps(durable)
        self._pending_events.append(_ev("ckpt_durable", enabled=durable is not None, message=why))
        self._watcher.start()
        self._pending_events.append(_ev("ckpt_watch", mode=self._watcher.mode, message=self._watcher.reason,
                                        dirs=roots_mod.describe(self.roots)))
        self._worker = threading.Thread(target=self._work, name="rgt-ckpt-worker", daemon=True)
        self._worker.start()

    def close(self) -> None:
        """Stop the watcher and the worker; a verifier still running is killed (it is our own child)."""
        self._closing.set()
        self._watcher.stop()
        self._jobs.put(None)
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if self._worker is not None:
            self._worker.join(timeout=10)

    def set_trainer_running(self, running: bool) -> None:
        """With no trainer, a candidate needs no settle time (it still must not be open for writing)."""
        self._trainer_running = running

    def pending(self) -> int:
        """Candidates seen but not yet recorded (settling or in flight)."""
        return len(self._seen) + len(self._inflight)

    # ---- the daemon's tick ------------------------------------------------------------------------

    def tick(self, now: float) -> List[Dict[str, Any]]:
        """Collect the worker's results, scan for complete checkpoints and queue them; returns journaled events.

        ``now`` only times settling, so any clock works; timestamps stored in the index are wall clock.
        """
        self.start()
        events, self._pending_events = self._pending_events, []
        while True:
            try:
                key, evs = self._results.get_nowait()
            except queue.Empty:
                break
            self._inflight.discard(key)
            if key in self._seen:
                self._seen[key].queued = False
            events.extend(evs)
        renamed, written = self._watcher.take()
        cands, unreadable = roots_mod.collect(self.roots, self.matcher, self._baseline, now,
                                              self._watcher.mode == "inotify", list(renamed) + list(written))
        for r in self.roots:
            if r.truncated and not r.warned:
                r.warned = True
                events.append(_ev("ckpt_watch_truncated", path=r.path, limit=roots_mod.SCAN_BUDGET,
                                  message=f"{r.path} has more than {roots_mod.SCAN_BUDGET} entries: checkpoints "
                                          "deep in it may be missed; pass --ckpt-dir for the folder they go to"))
        if self.roots[0] in unreadable:  # the checkpoint dir itself is unreadable right now
            return self._finish(events)
        records = self.book.snapshot()
        self._observe(cands, records, now, renamed, written)
        for key, seen in sorted(self._seen.items(), key=_oldest_first):
            arrived = None if seen.queued else self._complete(seen, now)
            if arrived:
                seen.queued = True
                self._inflight.add(key)
                self._jobs.put(Job("process", key, seen.path, seen.is_dir, seen.fp, arrived))
        present = set(cands) | {k for k in records if self._root_of(k) in unreadable}  # judge nothing vanished
        for path in self.book.mark_missing(present, self._inflight, self._now()):
            events.append(_ev("ckpt_missing", path=path, message="a recorded checkpoint vanished; not removed by rgt"))
        self._retry_durable(cands, records, now)
        return self._finish(events)

    def _finish(self, events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        for ev in events:
            self._journal(ev)
        return events

    def _root_of(self, key: str) -> roots_mod.Root:
        return roots_mod.root_of(self.roots, key)

    def kind_of(self, key: str) -> str:
        """"rgt" for rgt's own checkpoint dir, "user" or "code" for the user's folders (never pruned by default)."""
        return self._root_of(key).kind

    def watch_dirs(self) -> List[str]:
        """Where checkpoints are looked for, as the box names them."""
        return roots_mod.describe(self.roots)

    def _observe(self, cands: Dict[str, Tuple[str, bool]], records: Dict[str, Dict[str, Any]], now: float,
                 renamed: Dict[str, float], written: Dict[str, float]) -> None:
        for key, (path, is_dir) in cands.items():
            if key in self._inflight:
                continue
            fp = fingerprint(path)
            rec = records.get(key)
            known = rec is not None and same(rec, fp)
            if known and rec.get("missing"):
                self.book.update(key, missing=False, pruned=False, pruned_at=None, prune_reason=None)  # it is back
            if fp is None or (known and not self._verify_again(rec, self._now())):
                self._seen.pop(key, None)
                continue
            seen = self._seen.get(key)
            if seen is None:
                self._seen[key] = _Seen(path, is_dir, fp, now)
            elif seen.fp != fp:
                seen.fp, seen.changed_at = fp, now
        offset = now - self._now()  # watcher stamps are on our clock; `now` may be the daemon's own
        for events, attr in ((renamed, "renamed_at"), (written, "written_at")):
            for p, t in events.items():
                k = next((k for k in (key_of(r.path, p, self._seen, r.prefix) for r in reversed(self.roots))
                          if k is not None), None)
                if k is not None:
                    setattr(self._seen[k], attr, max(t + offset, getattr(self._seen[k], attr) or float("-inf")))
        for key in [k for k in self._seen if k not in cands and k not in self._inflight]:
            del self._seen[key]

    def _complete(self, seen: _Seen, now: float) -> Optional[str]:
        """"rename" when it arrived by rename with no write since; "settled" after settle_s unchanged."""
        if seen.renamed_at is not None and (seen.written_at is None or seen.written_at <= seen.renamed_at):
            return "rename"
        last = seen.changed_at if seen.written_at is None else max(seen.changed_at, seen.written_at)
        if self._trainer_running and now - last < self.spec.settle_s:
            return None
        return None if open_for_write(seen.path) else "settled"

    @staticmethod
    def _verify_again(rec: Dict[str, Any], wall: float) -> bool:
        """An unverifiable verdict (verifier killed, timed out, torch missing) is retried with a growing pause."""
        pause_s = RETRY_UNVERIFIABLE_S * rec.get("versions", 1)
        return rec["state"] == "unverifiable" and wall - rec["verified_at"] >= pause_s

    def _retry_durable(self, cands: Dict[str, Tuple[str, bool]], records: Dict[str, Dict[str, Any]],
                       now: float) -> None:
        if not self.book.durable_dir:
            return
        for key, rec in records.items():
            if (not rec.get("durable_error") or rec["state"] not in self.book.resumable() or key not in cands
                    or key in self._inflight or now < self._retry_at.get(key, 0.0)):
                continue
            path, is_dir = cands[key]
            fp = fingerprint(path)
            if same(rec, fp) and fp is not None:
                self._retry_at[key] = now + DURABLE_RETRY_S
                self._inflight.add(key)
                self._jobs.put(Job("durable", key, path, is_dir, fp, "retry"))

    # ---- the worker thread ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                evs = self._handle(job)
            except Exception as e:  # noqa: BLE001 - policy point: one bad checkpoint must not stop the pipeline
                self.log.exception("checkpoint pipeline failed on %s", job.path)
                evs = [_ev("ckpt_error", path=self.book.rel(job.path), error=f"{type(e).__name__}: {e}")]
            self._results.put((job.key, evs))

    def _set_proc(self, proc: Any) -> None:
        self._proc = proc

    def _handle(self, job: Job) -> List[Dict[str, Any]]:
        book = self.book
        if job.kind == "durable":
            rec = book.get(job.key)
            if rec is None or not book.durable_dir:
                return []
            update = retry_durable(job, rec, book.durable_dir)
            book.update(job.key, **update)
            if update.get("durable_error"):
                return [_ev("ckpt_durable_failed", path=rec["path"], error=update["durable_error"])]
            return [_ev("ckpt_durable_copied", path=rec["path"], to=update["durable"]["path"])]
        rec = process(job, book.durable_dir, self.verify_argv_prefix, self.spec.allow_pickle,
                      self.verify_timeout_s, self._set_proc)
        if rec is None:
            return [_ev("ckpt_changed", path=book.rel(job.path), message="changed while checked; looking again")]
        if self._closing.is_set():
            return []  # a verifier killed by close() says nothing about the checkpoint
        rec["path"], rec["found_at"] = book.rel(job.path), self._now()
        if rec["step"] is None:  # nanoGPT's out/ckpt.pt: the newest step the agent read from the trainer
            rec["step"] = roots_mod.progress_step(self.paths.status)
        for f in rec["files"] or []:  # directory checkpoints: run-relative paths, for the manifest
            f["path"] = book.rel(os.path.join(job.path, f.pop("rel")))
        book.put(rec)
        events = [self._verdict(rec)]
        if rec["durable_error"]:
            events.append(_ev("ckpt_durable_failed", path=rec["path"], error=rec["durable_error"]))
        if rec["state"] in SUSPECT:
            events.append(self._quarantine(job, rec))
        if self._closing.is_set():
            return []  # a verifier killed by close() says nothing about the checkpoint
        removed = book.retain("retention", set())
        events.extend(_ev("ckpt_pruned", path=book.rel(p), paths=[book.rel(p)], reason="retention") for p in removed)
        return events

    def _verdict(self, rec: Dict[str, Any]) -> Dict[str, Any]:
        state, path = rec["state"], rec["path"]
        if state == RESUMABLE:
            return _ev("ckpt_verified", path=path, step=rec["step"], sha256=rec["sha256"],
                       size_bytes=rec["size_bytes"], tensors=rec["tensors"], arrived=rec["arrived"],
                       durable=(rec["durable"] or {}).get("path"), coverage=rec.get("coverage"),
                       hash_only=rec.get("hash_only") or [])
        if state == PICKLE:
            target = "it IS a resume target (--allow-pickle)" if self.spec.allow_pickle else (
                "it is NOT a resume target; start the run with `rgt up --allow-pickle` (or [run] allow_pickle = "
                "true) only if you trust the code that wrote it")
            return _ev("ckpt_unverified_pickle", path=path, detail=rec["detail"],
                       resume_target=self.spec.allow_pickle,
                       message=f"UNVERIFIED PICKLE: {path} needs full unpickling to load; {target}")
        if state == "unverifiable":
            return _ev("ckpt_unverifiable", path=path, detail=rec["detail"],
                       message=f"CANNOT VERIFY {path}: {rec['detail']}; it is not a resume target")
        return _ev(f"ckpt_{state}", path=path, detail=rec["detail"])

    def _quarantine(self, job: Job, rec: Dict[str, Any]) -> Dict[str, Any]:
        if self.kind_of(job.key) != "rgt":  # the user's own folder: moving files out of it breaks the trainer
            return _ev("ckpt_suspect_kept", path=rec["path"], reason=rec["state"],
                       message=f"left in place in your folder: {rec['path']} is {rec['state']}; not a resume target")
        if fingerprint(job.path) != job.fp:
            return _ev("ckpt_changed", path=rec["path"], message="changed after failing verification")
        if open_for_write(job.path):
            return _ev("ckpt_suspect_kept", path=rec["path"], message="left in place: a process still writes it")
        reason = {"reason": rec["state"], "detail": rec["detail"], "sha256": rec["sha256"],
                  "size_bytes": rec["size_bytes"], "step": rec["step"], "run_id": self.spec.run_id}
        try:
            dest = store.quarantine(job.path, self.paths.quarantine, reason)
        except OSError as e:
            return _ev("ckpt_quarantine_failed", path=rec["path"], error=str(e))
        self.book.update(job.key, quarantined=self.book.rel(dest))
        return _ev("ckpt_quarantined", path=rec["path"], to=self.book.rel(dest), reason=rec["state"],
                   detail=rec["detail"])

    # ---- what the daemon reads --------------------------------------------------------------------

    def prune(self, reason: str) -> List[str]:
        """The disk is past its act level: prune now, the user's folders too; returns the removed absolute paths.

        In the user's folders only verified checkpoints older than the newest verified one go.
        """
        self.start()
        removed = self.book.retain(reason, set(self._inflight), disk=True)
        for p in removed:
            self._journal(_ev("ckpt_pruned", path=self.book.rel(p), paths=[self.book.rel(p)], reason=reason))
        return removed

    def resume_from(self) -> Optional[str]:
        """Absolute path of the newest verified checkpoint (or unverified_pickle with allow_pickle)."""
        return self.book.resume_from()

    def status(self, now: float) -> Checkpoint:
        """status.json's checkpoint block, with where checkpoints are looked for."""
        cp = self.book.status(now)
        cp.watch_dirs = self.watch_dirs()
        return cp

    def warning(self) -> Optional[str]:
        """One loud line when the newest checkpoint is not a good resume target."""
        return self.book.warning()

    def records(self) -> List[Dict[str, Any]]:
        """Index records, oldest first, for the manifest."""
        return self.book.records()

    def _journal(self, ev: Dict[str, Any]) -> None:
        fields = {k: v for k, v in ev.items() if k != "kind"}
        level = logging.INFO if ev["kind"] in QUIET else logging.WARNING
        self.log.log(level, "%s %s", ev["kind"], fields.get("message") or fields.get("path") or fields)
        self.journal.append(ev["kind"], **fields)
