"""One checkpoint's processing (agent's worker thread, on the box): verify in a subprocess while hash+copy runs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from . import store
from .book import PICKLE, RESUMABLE
from .scan import Fingerprint, fingerprint
from .snapshot import step_of


class Job(NamedTuple):
    """A complete checkpoint to process ("process"), or a durable copy to retry ("durable")."""

    kind: str
    key: str
    path: str
    is_dir: bool
    fp: Fingerprint
    arrived: str  # "rename" | "settled" | "retry"


def read_sidecar(path: str) -> Dict[str, Any]:
    """The helper's hidden sidecar (``.<name>.rgt.json``): step, metrics, save cost; {} when absent."""
    d, base = os.path.split(path.rstrip("/"))
    try:
        with open(os.path.join(d, f".{base}.rgt.json"), "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def clean_metrics(metrics: Any) -> Dict[str, Any]:
    """Numbers, strings and bools only; non-finite numbers become None (the index is strict JSON)."""
    out: Dict[str, Any] = {}
    for k, v in (metrics or {}).items() if isinstance(metrics, dict) else []:
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        if v is None or isinstance(v, (bool, int, float, str)):
            out[str(k)] = v
    return out


def verify(prefix: List[str], path: str, timeout_s: float, set_proc: Callable[[Any], None],
           work: Callable[[], None]) -> Dict[str, Any]:
    """Run ``prefix + [path]`` (nice'd by the verifier itself) while ``work()`` runs here; parse its JSON line."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(prefix + [path], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env=env, close_fds=True)
        except OSError as e:
            work()
            return {"ok": False, "kind": "unverifiable", "detail": f"cannot start the verifier: {e}"}
        set_proc(proc)
        try:
            work()
            started = time.monotonic()
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return {"ok": False, "kind": "unverifiable",
                        "detail": f"the verifier took longer than {timeout_s:.0f} s"
                                  f" (waited {time.monotonic() - started:.0f} s after hashing)"}
        finally:
            set_proc(None)
        out.seek(0)
        err.seek(0)
        lines = [ln for ln in out.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        tail = err.read()[-600:].decode("utf-8", "replace").strip()
    try:
        result = json.loads(lines[-1])
        if isinstance(result, dict) and result.get("kind"):
            return result
    except (IndexError, ValueError):
        pass
    return {"ok": False, "kind": "unverifiable", "detail": f"the verifier exited {rc} without a verdict: {tail}"}


def process(job: Job, durable_dir: Optional[str], prefix: List[str], allow_pickle: bool,
            timeout_s: Optional[float], set_proc: Callable[[Any], None]) -> Optional[Dict[str, Any]]:
    """Hash (copying to a temp name in the durable dir) while the verifier runs; None if the file changed.

    The durable copy gets its final name only once the checkpoint verified.
    """
    final = tmp = None
    if durable_dir is not None:
        final = os.path.join(durable_dir, job.key)
        tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.rgt-copy.tmp")
        try:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            store.remove_path(tmp)
        except OSError:
            tmp = None
    copied: List[store.Copied] = []
    errors: List[OSError] = []

    def work() -> None:
        try:
            copied.append(store.hash_and_copy(job.path, job.is_dir, tmp))
        except OSError as e:  # vanished or unreadable: decided below, after the verifier is reaped
            errors.append(e)

    limit = timeout_s or max(300.0, job.fp.size / (20 << 20))
    verdict = verify(prefix, job.path, limit, set_proc, work)
    if errors or fingerprint(job.path) != job.fp:
        if tmp:
            store.remove_path(tmp)
        if errors and fingerprint(job.path) == job.fp:
            raise errors[0]  # a read error on an unchanged file: reported as ckpt_error
        return None
    c = copied[0]
    state = str(verdict.get("kind"))
    resumable = state == RESUMABLE or (state == PICKLE and allow_pickle)
    side = {} if job.is_dir else read_sidecar(job.path)
    step = side.get("step") if isinstance(side.get("step"), int) else step_of(job.key)
    durable, durable_error = None, None
    if tmp is not None and final is not None:
        if resumable and c.copy_error is None:
            try:
                store.publish(tmp, final)
                durable = {"path": final, "sha256": c.sha256, "size_bytes": c.size_bytes, "state": state,
                           "mtime_ns": job.fp.mtime_ns, "step": step, "copied_at": time.time()}
            except OSError as e:
                durable_error = f"{final}: {e}"
        else:
            durable_error = c.copy_error if resumable else None
        store.remove_path(tmp)
    elif durable_dir is not None and resumable:
        durable_error = f"cannot prepare a copy in {durable_dir}"
    return {
        "key": job.key, "is_dir": job.is_dir, "size_bytes": c.size_bytes, "sha256": c.sha256,
        "files": c.files if job.is_dir else None,
        "mtime_ns": job.fp.mtime_ns, "ino": job.fp.ino, "file_count": job.fp.files,
        "step": step, "metrics": clean_metrics(side.get("metrics")),
        "save_cost_s": side.get("save_cost_s") if isinstance(side.get("save_cost_s"), (int, float)) else None,
        "sidecar": None if not side else f".{os.path.basename(job.path)}.rgt.json",
        "state": state, "detail": str(verdict.get("detail") or ""), "tensors": verdict.get("tensors"),
        # "partial": files covered by hash and a structure check only, e.g. an HF training_args.bin
        "coverage": verdict.get("coverage"), "hash_only": [str(x) for x in verdict.get("hash_only") or []],
        "arrived": job.arrived, "verified_at": time.time(),
        "durable": durable, "durable_error": durable_error,
        "pruned": False, "quarantined": None, "missing": False,
    }


def retry_durable(job: Job, rec: Dict[str, Any], durable_dir: str) -> Dict[str, Any]:
    """Copy a resumable checkpoint again after a failed durable copy; the copy must hash to the index's sha256."""
    final = os.path.join(durable_dir, job.key)
    tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.rgt-copy.tmp")
    try:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        c = store.hash_and_copy(job.path, job.is_dir, tmp)
        if c.copy_error is None and c.sha256 == rec["sha256"] and fingerprint(job.path) == job.fp:
            store.publish(tmp, final)
            return {"durable": {"path": final, "sha256": c.sha256, "size_bytes": c.size_bytes,
                                "state": rec["state"], "mtime_ns": rec["mtime_ns"], "step": rec.get("step"),
                                "copied_at": time.time()}, "durable_error": None}
        error = c.copy_error or "the checkpoint changed while it was copied"
    except OSError as e:
        error = f"{final}: {e}"
    store.remove_path(tmp)
    return {"durable_error": error}
