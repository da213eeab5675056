"""Queues and stage chains on the laptop: parse a queue file and rgt.toml's [stages] into spec cells."""

from __future__ import annotations

import re
from typing import Any, Dict, List

from rgt.shared.errors import BadInput

NAMED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,47}):\s+(?P<cmd>\S.*)$")
STAGE_ORDER = ("setup", "train", "eval", "export")


def parse_queue(text: str, source: str = "queue file") -> List[Dict[str, Any]]:
    """One shell command per line; `#` and blank lines are skipped and not counted; `name: cmd` names a cell."""
    cells: List[Dict[str, Any]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = NAMED.match(line)
        name, cmd = (m.group("name"), m.group("cmd")) if m else (f"cell-{len(cells) + 1:02d}", line)
        if any(c["name"] == name for c in cells):
            raise BadInput(f"{source}:{lineno}: cell name {name!r} is used twice; names must be unique")
        cells.append({"name": name, "command": ["bash", "-c", cmd], "kind": "queue", "line": lineno})
    if not cells:
        raise BadInput(f"{source} has no cells (only blank or # lines)")
    return cells


def parse_stages(stages: Dict[str, Any], source: str = "rgt.toml") -> List[Dict[str, Any]]:
    """[stages] setup/train/eval/export, run in that order; a value is a command or {command, timeout_s}."""
    unknown = set(stages) - set(STAGE_ORDER)
    if unknown:
        raise BadInput(f"{source}: stages.{sorted(unknown)[0]}: unknown stage (use {', '.join(STAGE_ORDER)})")
    cells = []
    for name in STAGE_ORDER:
        if name not in stages:
            continue
        value = stages[name]
        table = value if isinstance(value, dict) else {"command": value}
        cmd = table.get("command")
        if not isinstance(cmd, str) or not cmd.strip():
            raise BadInput(f"{source}: stages.{name}: needs a command string")
        cell: Dict[str, Any] = {"name": name, "command": ["bash", "-c", cmd], "kind": "stage"}
        if table.get("timeout_s") is not None:
            cell["timeout_s"] = float(table["timeout_s"])
        if name == "setup":
            cell["filter_torch"] = bool(table.get("filter_torch", True))
        cells.append(cell)
    return cells


def parse_gpus(text: str) -> List[int]:
    """"0,1" -> [0, 1]."""
    try:
        gpus = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInput(f"bad --gpus {text!r}: give indices like 0,1") from None
    if not gpus or any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise BadInput(f"bad --gpus {text!r}: give distinct indices like 0,1")
    return gpus
