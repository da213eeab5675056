"""Two-phase checkpoint saving (in the trainer's process, via the helper): CPU snapshot, then a background write.

Stdlib only at import; torch is imported on first use. One set of snapshot buffers is reused from save
to save, so a save waits for the previous write before it snapshots (at most one write in flight).
"""

from __future__ import annotations

import copy
import math
import os
import re
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ...shared.atomic import atomic_write_json, fsync_dir

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.rgt\.tmp$")
_STEP_RE = re.compile(r"(\d+)(?!.*\d)")
Key = Tuple[Any, ...]  # where a tensor sits in the state: its buffer is reused under this key


class CheckpointWriteError(RuntimeError):
    """The background write of an earlier save() failed; raised by the next save() or wait()."""


def step_of(name: str) -> Optional[int]:
    """The last number in a checkpoint's file name (step_000000100.pt, checkpoint-500), if any."""
    m = _STEP_RE.search(os.path.basename(name.rstrip("/")))
    return int(m.group(1)) if m else None


def sidecar_path(ckpt_path: str) -> str:
    """The hidden JSON beside a checkpoint: step, metrics and save cost (read by the agent)."""
    d, base = os.path.split(ckpt_path)
    return os.path.join(d, f".{base}.rgt.json")


def plain(value: Any) -> Any:
    """A JSON-safe copy of a metric; non-finite floats become None."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (RuntimeError, ValueError):
            return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f if math.isfinite(f) else None


def nonfinite(value: Any) -> bool:
    """A number (or one-element tensor) that is NaN or infinite."""
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError, RuntimeError):
        return False


class Snapshotter:
    """Copies a state (nested dicts, lists, tuples of tensors and plain values) into reused CPU buffers."""

    def __init__(self) -> None:
        self.torch: Any = None
        self._buffers: Dict[Key, Any] = {}

    def take(self, state: Any) -> Any:
        """A copy of ``state`` as of now; tensors land in the buffers of the previous take where shapes match."""
        if self.torch is None:
            import torch

            self.torch = torch
        used: Dict[Key, Any] = {}
        cuda = [False]
        snap = self._snap(state, (), used, cuda)
        if cuda[0]:
            self.torch.cuda.synchronize()  # the pinned buffers must hold the values before save() returns
        self._buffers = used
        return snap

    def _snap(self, obj: Any, key: Key, used: Dict[Key, Any], cuda: List[bool]) -> Any:
        if isinstance(obj, self.torch.Tensor):
            return self._tensor(obj, key, used, cuda)
        if isinstance(obj, dict):
            try:
                out = obj.__class__()
            except TypeError:
                out = {}
            for k, v in obj.items():
                out[k] = self._snap(v, key + (k,), used, cuda)
            extra = getattr(obj, "__dict__", None)
            if extra:  # a module's state_dict carries _metadata (versions) that load_state_dict reads
                out.__dict__.update(copy.deepcopy(extra))
            return out
        if isinstance(obj, list):
            return [self._snap(v, key + (i,), used, cuda) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            items = [self._snap(v, key + (i,), used, cuda) for i, v in enumerate(obj)]
            return obj.__class__(*items) if hasattr(obj, "_fields") else tuple(items)
        return copy.deepcopy(obj)  # the file must hold the value as of the call

    def _tensor(self, t: Any, key: Key, used: Dict[Key, Any], cuda: List[bool]) -> Any:
        torch = self.torch
        src = t.detach()
        if src.layout != torch.strided or src.is_quantized or getattr(src, "is_nested", False):
            return src.to("cpu", copy=True)  # rare layouts: a fresh copy, no buffer reuse
        buf = self._buffers.get(key)
        if buf is None or buf.shape != src.shape or buf.dtype != src.dtype:
            buf = torch.empty(src.shape, dtype=src.dtype, device="cpu", pin_memory=bool(src.is_cuda))
        buf.copy_(src, non_blocking=bool(src.is_cuda))
        cuda[0] = cuda[0] or bool(src.is_cuda)
        used[key] = buf
        return buf


class Writer:
    """Writes one snapshot at a time in a non-daemon thread: temp name, fsync, sidecar, rename, fsync of the dir."""

    def __init__(self, run_id: Optional[str], on_done: Callable[[Dict[str, Any]], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.run_id = run_id
        self.on_done = on_done
        self._clock = clock
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._cleaned: Dict[str, bool] = {}

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise CheckpointWriteError if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise CheckpointWriteError(f"checkpoint write failed: {err}") from err

    def start(self, torch: Any, snap: Any, path: str, step: int, metrics: Dict[str, Any], snapshot_s: float) -> None:
        """Start writing ``snap`` to ``path``; the caller has waited for the previous write."""
        directory = os.path.dirname(path)
        if not self._cleaned.get(directory):
            clean_stale_temps(directory)
            self._cleaned[directory] = True
        # Non-daemon: the interpreter's exit waits for the write to land.
        self._thread = threading.Thread(target=self._write, args=(torch, snap, path, step, metrics, snapshot_s),
                                        name="rgt-ckpt-writer", daemon=False)
        self._thread.start()

    def _write(self, torch: Any, snap: Any, path: str, step: int, metrics: Dict[str, Any],
               snapshot_s: float) -> None:
        directory, base = os.path.split(path)
        tmp = os.path.join(directory, f".{base}.{os.getpid()}.rgt.tmp")
        t0 = self._clock()
        try:
            torch.save(snap, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            write_s = self._clock() - t0
            info = {
                "step": step, "metrics": {str(k): plain(v) for k, v in metrics.items()},
                "nonfinite": sorted(str(k) for k, v in metrics.items() if nonfinite(v)),
                "snapshot_s": snapshot_s, "write_s": write_s, "save_cost_s": snapshot_s + write_s,
                "size_bytes": os.path.getsize(tmp), "saved_at": time.time(), "run_id": self.run_id, "name": base,
            }
            # The sidecar lands first, so whoever sees the checkpoint can read its metrics.
            atomic_write_json(sidecar_path(path), info)
            os.replace(tmp, path)
            fsync_dir(directory)
        except Exception as e:  # noqa: BLE001 - policy point: a writer thread's error goes to the training loop
            self._error = e
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        self.on_done(dict(info, path=path))


def clean_stale_temps(directory: str) -> None:
    """Remove our own temp files left by a killed trainer (their writer pid is gone)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for n in names:
        m = _TMP_RE.match(n)
        if not m or int(m.group("pid")) == os.getpid() or _pid_alive(int(m.group("pid"))):
            continue
        try:
            os.unlink(os.path.join(directory, n))
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
