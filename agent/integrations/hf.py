"""Hugging Face TrainerCallback (runs in the user's training process): step, total, loss, lr and saves to rgt.

    from rgt.agent.integrations.hf import RgtCallback, rgt_resume_from
    trainer = Trainer(..., callbacks=[RgtCallback()])
    trainer.train(resume_from_checkpoint=rgt_resume_from())   # the checkpoint-N dir the agent names

Imports ``transformers`` here, so importing this module without it fails with a clear error.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from .. import helper
from . import missing, number, rgt_ckpt_path

try:
    from transformers import TrainerCallback
except ImportError as _e:
    raise missing("Hugging Face", "transformers", _e) from None

__all__ = ["RgtCallback", "rgt_ckpt_path", "rgt_resume_from"]


def rgt_resume_from() -> Optional[str]:
    """$RGT_RESUME_FROM as ``resume_from_checkpoint`` takes it: a file inside ``checkpoint-N/`` names the dir."""
    path = rgt_ckpt_path()
    if path and os.path.isfile(path) and os.path.basename(os.path.dirname(path)).startswith("checkpoint-"):
        return os.path.dirname(path)
    return path


class RgtCallback(TrainerCallback):
    """Reports to the rgt agent at every step and log, and names each ``checkpoint-N`` when it is saved."""

    def __init__(self) -> None:
        self._last: Dict[str, Any] = {}

    def _report(self, state: Any) -> None:
        metrics = {k: v for k, v in self._last.items() if k != "loss" and v is not None}
        if getattr(state, "epoch", None) is not None:
            metrics["epoch"] = float(state.epoch)
        total = getattr(state, "max_steps", None) or None
        helper.report(state.global_step, self._last.get("loss"), "train", total_steps=total, **metrics)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The run started (total steps are known from here)."""
        if state.is_world_process_zero:
            self._report(state)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Every optimizer step: the global step, with the newest logged loss."""
        if state.is_world_process_zero:
            self._report(state)

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[Dict[str, Any]] = None,
               **kwargs: Any) -> None:
        """The logged loss, learning rate and grad norm (eval and summary logs are not the training loss)."""
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self._last = {"loss": number(logs.get("loss")), "learning_rate": number(logs.get("learning_rate")),
                      "grad_norm": number(logs.get("grad_norm"))}
        self._report(state)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Trainer just wrote ``output_dir/checkpoint-{global_step}``."""
        if state.is_world_process_zero:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            helper.note_checkpoint(os.path.abspath(path), state.global_step)
