"""How the agent on the box launches things: the trainer's env, secrets.env, and argv to re-run this archive."""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Mapping, Optional

from rgt.shared.paths import RunPaths
from rgt.shared.secrets import load_secrets
from rgt.shared.spec import RunSpec

ATTEMPT_HEADER = "=== rgt attempt {attempt} ===\n"


def archive_path() -> Optional[str]:
    """The agent archive (.pyz) this code runs from, or None when run from an installed package."""
    here = os.path.abspath(__file__)
    marker = ".pyz" + os.sep
    if marker in here:
        return here[: here.index(marker) + 4]
    return None


def self_argv(*args: str) -> List[str]:
    """Argv that runs this agent again with ``args``: the archive under -I, or the installed package."""
    archive = archive_path()
    if archive:
        return [sys.executable, "-I", archive, *args]
    return [sys.executable, "-m", "rgt.agent", *args]


def trainer_python(spec: RunSpec) -> str:
    """The interpreter of the trainer (the one with torch), to verify checkpoints under.

    The python the command runs, found through wrappers (env, sh -c, torchrun, accelerate launch, ...;
    see trainerpy), else the spec's.
    """
    from . import trainerpy

    path = spec.env.get("PATH") or os.environ.get("PATH")
    for argv in trainerpy.commands_of({"command": spec.command, "cells": spec.cells}):
        found = trainerpy.find(argv, path)
        if found:
            return found
    return spec.python or sys.executable


def verify_argv_prefix(spec: RunSpec) -> List[str]:
    """How the checkpoint pipeline runs `verify-ckpt` under the trainer's python."""
    python = spec.extra.get("verify_python") or trainer_python(spec)
    archive = archive_path()
    if archive:
        return [python, archive, "verify-ckpt"]
    return [python, "-m", "rgt.agent", "verify-ckpt"]


def attempt_header(attempt: int) -> str:
    """The line the waiter writes before each attempt, so a classifier reads only this attempt's tail."""
    return ATTEMPT_HEADER.format(attempt=attempt)


def ckpt_dir(spec: RunSpec, paths: RunPaths) -> str:
    """The checkpoint dir: spec.ckpt_dir, relative to the run dir unless absolute."""
    return os.path.join(paths.root, spec.ckpt_dir)


def helper_dir(paths: RunPaths) -> str:
    """Where the trainer helper writes progress.json for the agent (RGT_STATUS_DIR)."""
    return os.path.join(paths.root, "helper")


def trainer_env(spec: RunSpec, paths: RunPaths, attempt: int, resume_from: Optional[str],
                base: Optional[Mapping[str, str]] = None, stage: Optional[str] = None,
                notes: Optional[List[str]] = None) -> Dict[str, str]:
    """The trainer's environment: the agent's, the spec's plain vars, platform setup, secrets, RGT_*.

    Platform setup (proxy, mirrors, caches, thread caps) goes here only, never into the agent's env.
    """
    from . import platform_env

    env = platform_env.trainer_env(spec.env, spec.extra.get("platform_env") or {},
                                   base_env=os.environ if base is None else base, stage=stage,
                                   python=spec.python, notes=notes)
    env.update(load_secrets(paths.secrets))
    status_dir = helper_dir(paths)
    os.makedirs(status_dir, exist_ok=True)
    os.makedirs(ckpt_dir(spec, paths), exist_ok=True)
    env.update({
        "RGT_RUN_ID": spec.run_id,
        "RGT_CKPT_DIR": ckpt_dir(spec, paths),
        "RGT_STATUS_DIR": status_dir,
        "RGT_ATTEMPT": str(attempt),
        "RGT_AGENT_TAG": agent_tag(paths, attempt),
        "PYTHONUNBUFFERED": "1",
    })
    if spec.extra.get("mtbf_s"):
        env["RGT_MTBF_S"] = str(spec.extra["mtbf_s"])
    # Interruptions seen so far (crashes and preemptions alike), for the MTBF the helper observes.
    env["RGT_RUN_STARTED_AT"] = str(spec.created_at)
    env["RGT_RESTARTS"] = str(max(0, attempt - 1))
    if spec.extra.get("save_every_s"):
        env["RGT_SAVE_EVERY_S"] = str(spec.extra["save_every_s"])
    if spec.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec.gpus)
    if resume_from:
        env["RGT_RESUME_FROM"] = resume_from
    else:
        env.pop("RGT_RESUME_FROM", None)
    archive = archive_path()
    if archive:
        # The trainer helper imports from the archive; only the rgt package is exposed there.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (archive, env.get("PYTHONPATH")) if p)
    return env


def agent_tag(paths: RunPaths, attempt: int) -> str:
    """A tag in every trainer process's env: proof that a pid belongs to this run's attempt."""
    return f"{os.path.abspath(paths.root)}#{attempt}"


def cell_launch(spec: RunSpec, paths: RunPaths, attempt: int, resume_from: Optional[str], index: int,
                notes: List[str]):
    """Argv and env of a queue cell or stage: its own output dir; a setup stage keeps the image's torch."""
    from .cells import cell_dir, filter_torch_requirements

    cell = dict(spec.cells[index - 1], index=index)
    out = cell_dir(paths, cell)
    os.makedirs(out, exist_ok=True)
    stage = cell["name"] if cell.get("kind") == "stage" else None
    env = trainer_env(spec, paths, attempt, resume_from, stage=stage, notes=notes)
    env.update({"RGT_CELL_INDEX": str(index), "RGT_CELL_NAME": cell["name"], "RGT_CELL_DIR": out})
    if cell.get("kind") == "queue":
        env["RGT_CKPT_DIR"] = os.path.join(out, "ckpt")  # isolated: one cell never resumes another's
        os.makedirs(env["RGT_CKPT_DIR"], exist_ok=True)
    argv = list(cell["command"])
    if cell.get("name") == "setup" and cell.get("filter_torch", True) and argv[:2] == ["bash", "-c"]:
        argv[2], dropped = filter_torch_requirements(argv[2], paths.code, out)
        if dropped:
            notes.append("setup keeps the image's CUDA-matched torch; dropped from requirements: "
                         + "; ".join(dropped))
    return argv, env
