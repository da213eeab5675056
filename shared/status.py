"""The status.json schema (design section 5): written by the agent each tick, read by the controller."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .errors import RgtError

SCHEMA_VERSION = 1


class StatusError(RgtError):
    """status.json could not be used: truncated, not JSON, or from a newer schema."""


@dataclass
class LastFailure:
    """The classified cause of the latest bad end."""

    class_: Optional[str] = None  # serialised as "class"
    evidence: Optional[str] = None
    remediation: Optional[str] = None
    at: Optional[float] = None


@dataclass
class Trainer:
    """The user's process as the waiter sees it."""

    pid: Optional[int] = None
    start_time: Optional[float] = None
    attempt: int = 0
    restarts: int = 0
    exit_code: Optional[int] = None
    signal: Optional[str] = None
    last_failure: Optional[LastFailure] = None


@dataclass
class Progress:
    """What the training reported, through the helper or the log patterns."""

    step: Optional[int] = None
    total_steps: Optional[int] = None
    loss: Optional[float] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    phase: Optional[str] = None
    updated_at: Optional[float] = None
    source: Optional[str] = None  # "helper" | "log" | None


@dataclass
class Checkpoint:
    """The newest verified checkpoint."""

    last_path: Optional[str] = None
    last_step: Optional[int] = None
    last_verified_at: Optional[float] = None
    sha256: Optional[str] = None
    age_s: Optional[float] = None
    cadence_s: Optional[float] = None
    resume_from: Optional[str] = None
    warning: Optional[str] = None  # unverified pickle, corrupt newest checkpoint, failed durable copy
    watch_dirs: Optional[List[str]] = None  # where the agent looks for checkpoints (box paths)
    pruned_count: Optional[int] = None  # checkpoints rgt itself deleted (retention, a full disk)
    last_pruned: Optional[str] = None  # the newest of them: "path (reason)"
    warnings: List[str] = field(default_factory=list)  # every checkpoint that is no resume target, and why
    # How the newest resumable one was checked: "verified", "verified; hash only (metadata): training_args.bin",
    # "unverified pickle (resumable: --allow-pickle)"
    last_checks: Optional[str] = None


@dataclass
class Cell:
    """One queue cell or stage."""

    index: int
    name: str
    state: str
    exit_code: Optional[int] = None
    failure_class: Optional[str] = None


@dataclass
class Sentinel:
    """One sentinel's latest finding."""

    name: str
    level: str  # "ok" | "warn" | "critical"
    value: Optional[float] = None
    limit: Optional[float] = None
    message: Optional[str] = None


@dataclass
class Gpu:
    """One GPU, with field names after ``nvidia-smi --query-gpu``."""

    index: int
    uuid: Optional[str] = None
    name: Optional[str] = None
    util_pct: Optional[float] = None
    mem_used_bytes: Optional[int] = None
    mem_total_bytes: Optional[int] = None
    temp_c: Optional[float] = None
    power_w: Optional[float] = None
    sm_clock_mhz: Optional[int] = None
    sm_clock_max_mhz: Optional[int] = None
    throttle_reasons: List[str] = field(default_factory=list)
    xid_last: Optional[int] = None
    ecc_uncorrected: Optional[int] = None
    lost: bool = False


@dataclass
class Host:
    """Disk and memory of the box."""

    disk_free_bytes: Optional[int] = None
    inodes_free: Optional[int] = None
    mem_used_bytes: Optional[int] = None
    mem_limit_bytes: Optional[int] = None
    mem_peak_bytes: Optional[int] = None
    oom_kills: Optional[int] = None


@dataclass
class Cost:
    """Spend, from the profile, a flag or a provider API."""

    usd_per_hour: Optional[float] = None
    usd_so_far: Optional[float] = None


@dataclass
class Status:
    """The whole snapshot."""

    run_id: str
    state: str
    schema_version: int = SCHEMA_VERSION
    agent_version: Optional[str] = None
    incarnation: Optional[str] = None
    agent_pid: Optional[int] = None
    tick_s: float = 2.0
    updated_at: Optional[float] = None
    seq: int = 0
    next_action: Optional[str] = None
    trainer: Trainer = field(default_factory=Trainer)
    progress: Progress = field(default_factory=Progress)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    cells: List[Cell] = field(default_factory=list)
    sentinels: List[Sentinel] = field(default_factory=list)
    gpus: List[Gpu] = field(default_factory=list)
    host: Host = field(default_factory=Host)
    cost: Cost = field(default_factory=Cost)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form; ``class_`` becomes ``class``."""
        d = dataclasses.asdict(self)
        lf = d["trainer"].get("last_failure")
        if lf is not None:
            lf["class"] = lf.pop("class_")
        return d

    def to_json(self) -> bytes:
        """Compact JSON bytes for status.json (NaN is not JSON, so it becomes null)."""
        return json.dumps(_finite(self.to_dict()), separators=(",", ":"), sort_keys=True).encode("utf-8")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> Status:
        """Build from parsed JSON, ignoring fields added by a newer agent of the same schema."""
        trainer = dict(d.get("trainer") or {})
        lf = trainer.get("last_failure")
        if isinstance(lf, dict):
            lf = dict(lf)
            lf["class_"] = lf.pop("class", None)
            trainer["last_failure"] = _build(LastFailure, lf)
        return _build(
            cls,
            d,
            trainer=_build(Trainer, trainer),
            progress=_build(Progress, d.get("progress") or {}),
            checkpoint=_build(Checkpoint, d.get("checkpoint") or {}),
            cells=[_build(Cell, c) for c in d.get("cells") or []],
            sentinels=[_build(Sentinel, s) for s in d.get("sentinels") or []],
            gpus=[_build(Gpu, g) for g in d.get("gpus") or []],
            host=_build(Host, d.get("host") or {}),
            cost=_build(Cost, d.get("cost") or {}),
        )


def _build(kind: Any, d: Dict[str, Any], **override: Any) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    kwargs = {k: v for k, v in d.items() if k in names}
    kwargs.update(override)
    try:
        return kind(**kwargs)
    except TypeError as e:
        raise StatusError(f"status.json is missing a field of {kind.__name__}: {e}") from None


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def parse_status(raw: bytes, source: str = "status.json") -> Status:
    """Parse status bytes, or raise StatusError with one line a person can act on."""
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise StatusError(
            f"{source} is truncated or not JSON ({len(raw)} bytes); the agent may be mid-crash: try again"
        ) from None
    if not isinstance(d, dict) or "schema_version" not in d:
        raise StatusError(f"{source} is not an rgt status file")
    version = d["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise StatusError(
            f"{source} has schema_version {version!r}, newer than this rgt understands "
            f"({SCHEMA_VERSION}): upgrade rgt on this machine"
        )
    if not isinstance(d.get("run_id"), str) or not isinstance(d.get("state"), str):
        raise StatusError(f"{source} lacks run_id or state")
    return Status.from_dict(d)
