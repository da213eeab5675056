"""Trainer helper (runs in the user's training process, box or by hand): checkpoints, cadence, progress.

Imported from the agent archive on PYTHONPATH (``from rgt.agent import helper``), so it uses the stdlib only
and imports torch lazily. It reads RGT_RUN_ID, RGT_CKPT_DIR (default ./ckpt), RGT_RESUME_FROM,
RGT_SAVE_EVERY_S, RGT_STATUS_DIR, RGT_MTBF_S, RGT_RESTARTS and RGT_RUN_STARTED_AT.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .ckpt.cadence import DEFAULT_MTBF_S, Cadence, daly_interval_s, young_interval_s
from .ckpt.snapshot import CheckpointWriteError, Snapshotter, Writer, nonfinite, plain, sidecar_path, step_of

__all__ = [
    "CheckpointWriteError", "Helper", "cadence", "daly_interval_s", "get", "load_latest", "note_checkpoint",
    "preempted", "report", "save", "should_save", "sidecar_path", "step_of", "wait", "young_interval_s",
]

REPORT_MIN_INTERVAL_S = 0.5
SAVES_KEPT = 16  # the newest saves a framework made itself, listed in progress.json
CKPT_NAME = "step_{step:09d}.pt"
LOADABLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def _env_float(env: Mapping[str, str], name: str) -> Optional[float]:
    try:
        value = float(env[name])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


class Helper:
    """One trainer's checkpoint and progress state; the module functions use a lazily created instance."""

    def __init__(self, env: Optional[Mapping[str, str]] = None, clock: Callable[[], float] = time.monotonic):
        env = os.environ if env is None else env
        self.run_id = env.get("RGT_RUN_ID")
        self.ckpt_dir = os.path.abspath(env.get("RGT_CKPT_DIR") or "ckpt")
        self.resume_from = env.get("RGT_RESUME_FROM") or None
        self.status_dir = env.get("RGT_STATUS_DIR") or None
        self._clock = clock
        self.cadence = Cadence(_env_float(env, "RGT_SAVE_EVERY_S"), _env_float(env, "RGT_MTBF_S") or DEFAULT_MTBF_S,
                               int(_env_float(env, "RGT_RESTARTS") or 0), _env_float(env, "RGT_RUN_STARTED_AT"),
                               clock)
        self._snapshots = Snapshotter()
        self._writer = Writer(self.run_id, self._saved, clock)
        self.last_save: Dict[str, Any] = {}
        self.loaded_path: Optional[str] = None
        self._report_t: Optional[float] = None
        self._report_phase: Optional[str] = None
        self._pending: Optional[Dict[str, Any]] = None
        self._last_report: Optional[Dict[str, Any]] = None
        self._nan_streak, self._nan_first_step = 0, None  # consecutive report() calls with a non-finite loss
        self._nan_last: Optional[float] = None  # the last float loss: passed again, it is a re-report
        self.saves: List[Dict[str, Any]] = []
        self._preempted = False
        self._save_requested = False
        self._prev_usr1: Any = None
        self._saved_since_preempt = False
        self._handler_installed: Optional[bool] = None
        self._prev_handler: Any = None
        atexit.register(self._at_exit)

    # ---- checkpoints ------------------------------------------------------------------------------

    def save(self, state: Any, step: int, metrics: Optional[Dict[str, Any]] = None,
             name: Optional[str] = None) -> str:
        """Snapshot ``state`` to CPU (the only part the loop waits for), then write it in the background.

        Returns the final path. A failure of the previous background write is raised here.
        """
        self._writer.wait()  # one write in flight: the snapshot buffers are shared with it
        t0 = self._clock()
        os.makedirs(self.ckpt_dir, exist_ok=True)
        snap = self._snapshots.take(state)
        snapshot_s = self._clock() - t0
        path = os.path.join(self.ckpt_dir, name or CKPT_NAME.format(step=int(step)))
        self._writer.start(self._snapshots.torch, snap, path, int(step), dict(metrics or {}), snapshot_s)
        self.cadence.saved(int(step))
        if self._preempted:
            self._saved_since_preempt = True
        return path

    def _saved(self, info: Dict[str, Any]) -> None:
        self.cadence.measured(info["save_cost_s"])
        self.last_save = info

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; raise CheckpointWriteError if it failed."""
        self._writer.wait()

    def candidates(self) -> List[str]:
        """Loadable checkpoint files, newest first: RGT_RESUME_FROM, then the dir by step and mtime."""
        found: List[Tuple[Tuple[int, int, int], str]] = []
        try:
            entries = list(os.scandir(self.ckpt_dir))
        except OSError:
            entries = []
        for e in entries:
            if e.name.startswith(".") or e.name.endswith(".tmp") or not e.name.endswith(LOADABLE_SUFFIXES):
                continue
            try:
                if not e.is_file(follow_symlinks=False):
                    continue
                mtime = e.stat(follow_symlinks=False).st_mtime_ns
            except OSError:
                continue
            step = step_of(e.name)
            found.append(((0 if step is None else 1, -1 if step is None else step, mtime), e.path))
        ordered = [p for _, p in sorted(found, reverse=True)]
        if self.resume_from:
            first = os.path.abspath(self.resume_from)
            ordered = [self.resume_from] + [p for p in ordered if os.path.abspath(p) != first]
        return ordered

    def load_latest(self, map_location: Any = "cpu", weights_only: bool = True) -> Any:
        """The newest checkpoint that loads (RGT_RESUME_FROM first), skipping cut or corrupt ones; or None."""
        import pickle
        import zipfile

        import torch

        for path in self.candidates():
            try:
                state = torch.load(path, map_location=map_location, weights_only=weights_only)
            except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile):
                continue
            self.loaded_path = path
            return state
        return None

    def should_save(self, step: int) -> bool:
        """True when the Young/Daly interval (in steps) has passed since the last save, or after SIGTERM."""
        due = self.cadence.due(int(step))
        if self._save_requested:
            # SIGUSR1 (Slurm's --signal lead before the walltime, or the agent): save once, keep training.
            self._save_requested = False
            return True
        return due or (self._preempted and not self._saved_since_preempt)

    # ---- progress ---------------------------------------------------------------------------------

    def report(self, step: int, loss: Any = None, phase: Optional[str] = None,
               total_steps: Optional[int] = None, **metrics: Any) -> None:
        """Publish progress to $RGT_STATUS_DIR/progress.json (at most every 0.5 s unless the phase moves)."""
        self._pending = {"step": step, "loss": loss, "phase": phase, "total_steps": total_steps,
                         "metrics": metrics, "updated_at": time.time()}
        # Counted here, not at the (throttled) write: the agent's NaN policy reads it. The same float object
        # again (an integration re-sending the last logged loss at each step) is not a new measurement.
        if loss is not None and not (isinstance(loss, float) and loss is self._nan_last):
            bad = nonfinite(loss)
            self._nan_first_step = (step if not self._nan_streak else self._nan_first_step) if bad else None
            self._nan_streak = self._nan_streak + 1 if bad else 0
        self._nan_last = loss if isinstance(loss, float) else None  # never a tensor: it would keep its graph
        now = self._clock()
        if self._report_t is None or phase != self._report_phase or now - self._report_t >= REPORT_MIN_INTERVAL_S:
            self.flush_report()

    def note_checkpoint(self, path: Optional[str], step: Optional[int]) -> None:
        """A checkpoint the framework saved itself (Lightning, HF): named in progress.json at once."""
        info = {"step": None if step is None else int(step), "path": None if path is None else str(path),
                "at": time.time()}
        self.last_save = dict(self.last_save, step=info["step"], path=info["path"])
        self.saves = (self.saves + [info])[-SAVES_KEPT:]
        if self._pending is None and self._last_report is not None:
            self._pending = dict(self._last_report)
        if self._pending is None:
            self._pending = {"step": step, "loss": None, "phase": None, "total_steps": None, "metrics": {},
                             "updated_at": time.time()}
        self.flush_report()

    def flush_report(self) -> None:
        """Write the latest report now, if one is pending."""
        if self._pending is None or not self.status_dir:
            return
        p, self._pending = self._pending, None
        self._last_report = p
        self._report_t, self._report_phase = self._clock(), p["phase"]
        raw = dict(p["metrics"], loss=p["loss"])
        doc = {
            "schema": 1, "run_id": self.run_id, "pid": os.getpid(),
            "step": None if p["step"] is None else int(p["step"]),
            "total_steps": None if p["total_steps"] is None else int(p["total_steps"]),
            "loss": plain(p["loss"]), "phase": p["phase"],
            "metrics": {str(k): plain(v) for k, v in p["metrics"].items()},
            "nonfinite": sorted(k for k, v in raw.items() if v is not None and nonfinite(v)),
            "nonfinite_streak": self._nan_streak, "nonfinite_first_step": self._nan_first_step,
            "updated_at": p["updated_at"], "save_cost_s": self.cadence.cost_s,
            "cadence_s": self.cadence.current()["interval_s"], "last_save_step": self.last_save.get("step"),
            "last_save_path": self.last_save.get("path"), "saves": list(self.saves),
            "preempted": self._preempted,
        }
        path = os.path.join(self.status_dir, "progress.json")
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(self.status_dir, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f, allow_nan=False)
            os.replace(tmp, path)  # no fsync: progress is ephemeral, and an fsync could stall the loop
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    # ---- preemption -------------------------------------------------------------------------------

    def install_preemption_handler(self) -> bool:
        """Catch SIGTERM (preempted) and SIGUSR1 (save now), chaining earlier Python handlers.

        Only from the main thread. True when installed.
        """
        if self._handler_installed is not None:
            return self._handler_installed
        if threading.current_thread() is not threading.main_thread():
            return False  # signal.signal would raise; try again from the main thread
        self._prev_handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._prev_usr1 = signal.getsignal(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, self._on_sigusr1)
        self._handler_installed = True
        return True

    def _on_sigusr1(self, signum: int, frame: Any) -> None:
        self._save_requested = True
        if callable(self._prev_usr1):
            self._prev_usr1(signum, frame)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._preempted = True
        if callable(self._prev_handler):
            self._prev_handler(signum, frame)

    def preempted(self) -> bool:
        """True once SIGTERM arrived; the first call installs the handler (main thread only)."""
        self.install_preemption_handler()
        return self._preempted

    def _at_exit(self) -> None:
        try:
            self._writer.wait()
        except CheckpointWriteError:
            pass  # already lost; the missing checkpoint shows in the agent's index
        self.flush_report()


_lock = threading.Lock()
_instance: Optional[Helper] = None


def get() -> Helper:
    """The process-wide helper, created from the environment on first use."""
    global _instance
    with _lock:
        if _instance is None:
            _instance = Helper()
        return _instance


def save(state: Any, step: int, metrics: Optional[Dict[str, Any]] = None, name: Optional[str] = None) -> str:
    """Checkpoint ``state`` as of this call; the write finishes in the background."""
    return get().save(state, step, metrics, name)


def wait() -> None:
    """Wait for the background write; raises if it failed."""
    get().wait()


def load_latest(map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """The newest checkpoint that loads, or None."""
    return get().load_latest(map_location, weights_only)


def should_save(step: int) -> bool:
    """Whether to save at this step (Young/Daly cadence, RGT_SAVE_EVERY_S, or after SIGTERM)."""
    return get().should_save(step)


def report(step: int, loss: Any = None, phase: Optional[str] = None, **metrics: Any) -> None:
    """Progress for the agent; ``total_steps=`` is recognised, other keywords are metrics."""
    get().report(step, loss, phase, **metrics)


def note_checkpoint(path: Optional[str], step: Optional[int] = None) -> None:
    """Tell the agent about a checkpoint the framework wrote itself (the integrations call this)."""
    get().note_checkpoint(path, step)


def preempted() -> bool:
    """True once SIGTERM arrived (call it once early to arm the handler)."""
    return get().preempted()


def cadence() -> Dict[str, Any]:
    """The save interval in seconds and steps, with the measured cost and the MTBF."""
    return get().cadence.current()
