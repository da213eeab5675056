"""Reads a project's rgt.toml on the laptop: run defaults that flags override; errors name file and line."""

from __future__ import annotations

import os
import re
from typing import Any, Dict

import tomllib

from rgt.shared.errors import BadInput

RUN_KEYS = {
    "profile": str, "ckpt_dir": str, "artifacts": list, "max_restarts": int, "secrets": list, "python": str,
    "tick_s": (int, float), "stall_after_s": (int, float), "start_grace_s": (int, float), "run": str,
    "completion_files": list, "trainer_python": str, "durable_dir": str, "gpus": list, "share_gpu": bool,
    "min_free_gb": (int, float), "keep_last": int, "usd_per_hour": (int, float), "allow_pickle": bool,
}


def _line_of(text: str, key: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line):
            return i
    return 1


def load(project_dir: str) -> Dict[str, Any]:
    """The whole rgt.toml as a dict ({} when absent); [run] keys are type-checked."""
    path = os.path.join(project_dir, "rgt.toml")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{path}: malformed TOML: {e}") from None
    run = data.get("run", {})
    if not isinstance(run, dict):
        raise BadInput(f"{path}:{_line_of(text, 'run')}: run: must be a table")
    for key, value in run.items():
        want = RUN_KEYS.get(key)
        if want is None:
            raise BadInput(f"{path}:{_line_of(text, key)}: run.{key}: unknown key")
        if not isinstance(value, want) or isinstance(value, bool) and want is not bool:
            raise BadInput(f"{path}:{_line_of(text, key)}: run.{key}: wrong type {type(value).__name__}")
    data["_path"], data["_text"] = path, text
    return data
