"""Run ids and where things live on the box (design section 3); pure path arithmetic, no I/O."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, NamedTuple, Optional

from .errors import BadInput

if TYPE_CHECKING:  # imported lazily below: `rgt status` should not pay for them
    import datetime

RUN_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
MARKERS = ("DONE", "FAILED", "STOPPED")
# Manifest paths of files outside the run dir (an absolute --ckpt-dir): "abs/" plus the box path
# without its leading slash, so that a pull folder shows where each file came from.
ABS_PREFIX = "abs/"


def origin_path(run_root: str, full: str) -> str:
    """The manifest path of a box path: relative to the run dir inside it, else ``abs/<path>``."""
    rel = os.path.relpath(full, run_root)
    if rel == ".." or rel.startswith("../"):
        return ABS_PREFIX + os.path.normpath(full).lstrip("/")
    return rel.replace(os.sep, "/")


def box_path(run_root: str, rel: str) -> str:
    """The box path of a manifest path (the inverse of ``origin_path``)."""
    if rel.startswith(ABS_PREFIX):
        return "/" + rel[len(ABS_PREFIX):]
    return os.path.join(run_root, rel)


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` or raise BadInput with the rule spelled out."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise BadInput(
            f"bad run id {run_id!r}: use 1-64 of a-z 0-9 . _ -, starting with a letter or digit"
        )
    return run_id


def generate_run_id(name: str, now: Optional[datetime.datetime] = None) -> str:
    """Name-date-4hex, from a free-form name such as the script's file name."""
    import datetime
    import secrets

    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "run"
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d")
    return f"{slug}-{stamp}-{secrets.token_hex(2)}"


class RunPaths(NamedTuple):
    """Every path of one run directory, ``$RGT_ROOT/runs/<run_id>``."""

    root: str

    def _p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def run_id(self) -> str:
        """The run id is the directory's name."""
        return os.path.basename(self.root.rstrip("/"))

    @property
    def spec(self) -> str:
        """Immutable launch spec."""
        return self._p("spec.json")

    @property
    def secrets(self) -> str:
        """0600 secret values, never anywhere else."""
        return self._p("secrets.env")

    @property
    def code(self) -> str:
        """The run's own copy of the user's code; the trainer's cwd."""
        return self._p("code")

    @property
    def lock(self) -> str:
        """flock: one agent per run."""
        return self._p("agent.lock")

    @property
    def status(self) -> str:
        """The atomic status snapshot."""
        return self._p("status.json")

    @property
    def journal(self) -> str:
        """Append-only msgpack event stream."""
        return self._p("events.msgpack")

    @property
    def exit(self) -> str:
        """Written by the waiter when the trainer ends."""
        return self._p("exit.json")

    @property
    def trainer_record(self) -> str:
        """Written by the waiter once the trainer is started: pid, start time, incarnation."""
        return self._p("trainer.json")

    @property
    def logs(self) -> str:
        """Log directory."""
        return self._p("logs")

    @property
    def trainer_log(self) -> str:
        """The trainer's stdout and stderr, size-rotated by the waiter."""
        return self._p("logs", "trainer.log")

    @property
    def agent_log(self) -> str:
        """The agent's own log."""
        return self._p("logs", "agent.log")

    @property
    def control(self) -> str:
        """Requests to the agent (stop), written by the pyz's subcommands."""
        return self._p("control")

    @property
    def stop_request(self) -> str:
        """Presence asks the agent to stop the run."""
        return self._p("control", "stop.json")

    @property
    def quarantine(self) -> str:
        """Suspect artifacts, moved aside with a reason."""
        return self._p("quarantine")

    @property
    def manifest(self) -> str:
        """The artifact manifest the controller pulls by."""
        return self._p("manifest.json")

    def marker(self, name: str) -> str:
        """Path of a completion marker: DONE, FAILED or STOPPED."""
        if name not in MARKERS:
            raise ValueError(name)
        return self._p(name)

    def existing_marker(self) -> Optional[str]:
        """The name of the completion marker present, if any."""
        for name in MARKERS:
            if os.path.exists(self.marker(name)):
                return name
        return None


class BoxLayout(NamedTuple):
    """``$RGT_ROOT`` on a box: the agent archives and the runs."""

    root: str

    def pyz(self, sha12: str) -> str:
        """Where the agent archive with this hash lives; never overwritten in place."""
        return os.path.join(self.root, "agent", f"{sha12}.pyz")

    def run(self, run_id: str) -> RunPaths:
        """The paths of one run."""
        return RunPaths(os.path.join(self.root, "runs", validate_run_id(run_id)))

    @property
    def runs_dir(self) -> str:
        """Parent of all run directories."""
        return os.path.join(self.root, "runs")
