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
    "ckpt_globs": list, "nan_after": int,
}


def _line_of(text: str, key: str, table: str = "") -> int:
    """The line of ``key = ...`` inside ``[table]`` (or of the table header itself when key is the table)."""
    lines = text.splitlines()
    start = 0
    for i, line in enumerate(lines):
        if table and re.match(rf"\s*\[{re.escape(table)}\]", line):
            start = i
            break
    for i in range(start, len(lines)):
        if re.match(rf"\s*(\[)?{re.escape(key)}(\])?\s*(=|$)", lines[i]):
            return i + 1
    return start + 1


def check_table(project: Dict[str, Any], name: str, schema: Dict[str, Any]) -> Dict[str, Any]:
    """``project[name]`` checked key by key against ``schema``; an error names the file, the line and the key."""
    path, text = project.get("_path", "rgt.toml"), project.get("_text", "")
    table = project.get(name) or {}
    if not isinstance(table, dict):
        raise BadInput(f"{path}:{_line_of(text, name)}: {name}: must be a table")
    for key, value in table.items():
        want = schema.get(key)
        where = f"{path}:{_line_of(text, key, name)}: {name}.{key}"
        if want is None:
            raise BadInput(f"{where}: unknown key (known: {', '.join(sorted(schema))})")
        if not isinstance(value, want) or isinstance(value, bool) and want is not bool:
            raise BadInput(f"{where}: wrong type {type(value).__name__}")
    return table


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
    data["_path"], data["_text"] = path, text
    check_table(data, "run", RUN_KEYS)
    check_progress(data)
    return data


PROGRESS_KEYS = {"step": str, "loss": str, "total": str}


def check_progress(project: Dict[str, Any]) -> Dict[str, str]:
    """The [progress] table (regexes for step, loss, total), each compiled; an error names the line."""
    from rgt.agent.progformats import BadPattern, check_pattern

    table = check_table(project, "progress", PROGRESS_KEYS)
    for key, text in table.items():
        try:
            check_pattern(key, text)
        except BadPattern as e:
            where = f"{project.get('_path', 'rgt.toml')}:{_line_of(project.get('_text', ''), key, 'progress')}"
            raise BadInput(f"{where}: {e}") from None
    return dict(table)
