"""One-line framework integrations (run in the user's training process): progress and saves to the agent.

``from rgt.agent.integrations.lightning import RgtCallback`` (Lightning) and
``from rgt.agent.integrations.hf import RgtCallback`` (Hugging Face Trainer). Each needs only the agent
archive on PYTHONPATH (the agent puts it there) or rgt installed; the framework is imported by the
submodule, never here, so this package imports anywhere.
"""

from __future__ import annotations

import os
from typing import Any, Optional

__all__ = ["number", "rgt_ckpt_path"]


def rgt_ckpt_path() -> Optional[str]:
    """The checkpoint the agent asks this attempt to resume from ($RGT_RESUME_FROM), or None.

    Lightning: ``trainer.fit(model, ckpt_path=rgt_ckpt_path())``; HF: use the hf module's
    ``rgt_resume_from()``, which names the ``checkpoint-N`` dir that ``resume_from_checkpoint`` wants.
    """
    return os.environ.get("RGT_RESUME_FROM") or None


def number(value: Any) -> Optional[float]:
    """A plain float from a tensor, numpy scalar or number (nan/inf kept: the helper names them); else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        if hasattr(value, "detach"):
            value = value.detach()
        if hasattr(value, "item"):
            value = value.item()
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def missing(framework: str, package: str, err: ImportError) -> ImportError:
    """The clear error when the framework of an integration is not installed in this python."""
    return ImportError(f"rgt's {framework} integration needs {package} in this python ({err}); "
                       f"install it (pip install {package}) or drop the rgt callback")
