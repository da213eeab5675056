"""Lightning callback (runs in the user's training process): global step, total, loss, lr and saves to rgt.

    from rgt.agent.integrations.lightning import RgtCallback
    trainer = pl.Trainer(callbacks=[RgtCallback()])
    trainer.fit(model, ckpt_path=rgt_ckpt_path())   # resume where the agent says ($RGT_RESUME_FROM)

Works with any progress bar (RichProgressBar prints nothing to a pipe; this reports anyway). Imports
``lightning`` (or ``pytorch_lightning``) here, so importing this module without it fails with a clear error.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

from .. import helper
from . import missing, number, rgt_ckpt_path

try:
    from lightning.pytorch import Callback
    from lightning.pytorch.callbacks import ModelCheckpoint
except ImportError as _e:
    try:
        from pytorch_lightning import Callback
        from pytorch_lightning.callbacks import ModelCheckpoint
    except ImportError:
        raise missing("Lightning", "lightning", _e) from None

__all__ = ["RgtCallback", "rgt_ckpt_path"]


def _loss(outputs: Any, trainer: Any) -> Optional[float]:
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    loss = number(outputs)
    if loss is None:
        metrics = getattr(trainer, "callback_metrics", {}) or {}
        for key in ("train_loss", "loss", "train_loss_step"):
            if key in metrics:
                return number(metrics[key])
    return loss


def _lr(trainer: Any) -> Optional[float]:
    try:
        return number(trainer.optimizers[0].param_groups[0]["lr"])
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def _total(trainer: Any) -> Optional[int]:
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - policy point: a total is optional, and Lightning raises several kinds
        return None
    ok = isinstance(total, (int, float)) and not isinstance(total, bool) and math.isfinite(total) and total > 0
    return int(total) if ok else None


class RgtCallback(Callback):
    """Reports to the rgt agent after every optimizer step and at every checkpoint save."""

    def __init__(self) -> None:
        super().__init__()
        self._saved: Dict[int, str] = {}
        self._pending_save: Optional[int] = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Say the run started, with the total steps Lightning estimates."""
        if trainer.is_global_zero:
            helper.report(trainer.global_step, None, "train", total_steps=_total(trainer))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Global step (optimizer steps, not the bar's per-epoch batch), total, loss and lr."""
        if not trainer.is_global_zero:
            return
        self._note_saves(trainer)
        metrics: Dict[str, Any] = {"epoch": trainer.current_epoch, "batch": batch_idx}
        lr = _lr(trainer)
        if lr is not None:
            metrics["learning_rate"] = lr
        helper.report(trainer.global_step, _loss(outputs, trainer), "train", total_steps=_total(trainer),
                      **metrics)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: Dict[str, Any]) -> None:
        """Called before the file is written; its path is known after ModelCheckpoint saved it."""
        if trainer.is_global_zero:
            self._pending_save = trainer.global_step

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """ModelCheckpoint saves at validation end, too."""
        if trainer.is_global_zero:
            self._note_saves(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """The last save, and a final flush of the report."""
        if trainer.is_global_zero:
            self._note_saves(trainer)
            helper.get().flush_report()

    def _note_saves(self, trainer: Any) -> None:
        for cb in getattr(trainer, "checkpoint_callbacks", None) or []:
            if not isinstance(cb, ModelCheckpoint):
                continue
            path = getattr(cb, "_last_checkpoint_saved", "") or getattr(cb, "last_model_path", "")
            if path and path not in self._saved.values():
                step = self._pending_save if self._pending_save is not None else trainer.global_step
                self._saved[step] = path
                helper.note_checkpoint(path, step)
                self._pending_save = None
        if self._pending_save is not None and not (getattr(trainer, "checkpoint_callbacks", None) or []):
            helper.note_checkpoint(None, self._pending_save)  # saved by hand (trainer.save_checkpoint)
            self._pending_save = None
