"""The immutable launch spec (spec.json): written by the controller, read by the agent on the box."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .errors import BadInput
from .paths import validate_run_id

SPEC_VERSION = 1

DEFAULT_CKPT_GLOBS = ["*.pt", "*.pth", "*.ckpt", "*.safetensors", "checkpoint-*/"]


@dataclass
class RunSpec:
    """Everything the agent needs to run, supervise and finish one run. Secret *values* never go here."""

    run_id: str
    command: List[str]
    spec_version: int = SPEC_VERSION
    created_at: float = 0.0
    profile: str = "local"
    python: Optional[str] = None  # the trainer's python, for checkpoint verification
    env: Dict[str, str] = field(default_factory=dict)  # non-secret env for the trainer only
    secret_names: List[str] = field(default_factory=list)
    ckpt_dir: str = "ckpt"  # relative to the run dir, or absolute
    ckpt_globs: List[str] = field(default_factory=lambda: list(DEFAULT_CKPT_GLOBS))
    artifacts: List[str] = field(default_factory=list)
    durable_dir: Optional[str] = None
    keep_last: int = 3
    # The user's own folders (the working dir, a --ckpt-dir) are pruned only when the user asked
    # (--keep-last / [run] keep_last) or the disk is past the sentinel's act level; rgt's own ckpt/ always.
    prune_user_dirs: bool = False
    allow_pickle: bool = False
    tick_s: float = 2.0
    max_restarts: int = 3
    start_grace_s: float = 60.0
    stop_timeout_s: float = 30.0
    stall_after_s: Optional[float] = None  # None: max(600, 5x the longest step interval seen)
    nan_after: int = 3  # consecutive non-finite loss reports that end an attempt as `nan`
    backoff_s: float = 5.0
    backoff_max_s: float = 300.0
    settle_s: float = 5.0
    progress_patterns: Dict[str, str] = field(default_factory=dict)
    completion_files: List[str] = field(default_factory=list)  # globs under code/ that prove success
    log_max_bytes: int = 64 * 1024 * 1024
    log_keep: int = 3
    usd_per_hour: Optional[float] = None
    # Queues and stages: each cell {"name", "command": [argv], "kind": "queue"|"stage", "timeout_s"}.
    cells: List[Dict[str, Any]] = field(default_factory=list)
    from_cell: int = 1  # 1-based: start at the N-th real cell
    # Disk gate before every cell: free bytes floor and inode-use ceiling on the run and ckpt dirs.
    min_free_bytes: Optional[int] = None  # None: ckpt_size_bytes * keep_last + scratch_bytes
    ckpt_size_bytes: int = 0
    scratch_bytes: int = 256 * 1024 * 1024
    max_inode_frac: float = 0.95
    gpus: Optional[List[int]] = None  # CUDA_VISIBLE_DEVICES for this run, leased on the box
    share_gpu: bool = False
    notify: Dict[str, Any] = field(default_factory=dict)  # {"webhook_secret": NAME, "format": "slack"}
    extra: Dict[str, Any] = field(default_factory=dict)  # platform env recipe, save cadence, ...

    def validate(self) -> RunSpec:
        """Raise BadInput for a spec that cannot run."""
        validate_run_id(self.run_id)
        if not (self.command or self.cells) or not all(isinstance(a, str) for a in self.command):
            raise BadInput("the spec has no command: give one after `--`")
        if self.tick_s <= 0 or self.max_restarts < 0 or self.keep_last < 1:
            raise BadInput("tick_s must be > 0, max_restarts >= 0 and keep_last >= 1")
        if isinstance(self.nan_after, bool) or not isinstance(self.nan_after, int) or self.nan_after < 1:
            raise BadInput(f"nan_after must be a whole number >= 1, not {self.nan_after!r}")
        names = [c.get("name") for c in self.cells]
        if len(set(names)) != len(names):
            raise BadInput("cell names must be unique")
        for c in self.cells:
            if not c.get("command") or not all(isinstance(a, str) for a in c["command"]):
                raise BadInput(f"cell {c.get('name')!r} has no command")
        if self.cells and not 1 <= self.from_cell <= len(self.cells):
            raise BadInput(f"--from {self.from_cell} is outside the {len(self.cells)} cells")
        return self

    def disk_floor_bytes(self) -> int:
        """The free-space floor of the disk gate."""
        if self.min_free_bytes is not None:
            return self.min_free_bytes
        return self.ckpt_size_bytes * self.keep_last + self.scratch_bytes

    def to_json(self) -> bytes:
        """Readable JSON."""
        return (json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> RunSpec:
        """Build from JSON, ignoring unknown keys (a newer controller's additions)."""
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            spec = cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise BadInput(f"spec.json is incomplete: {e}") from None
        return spec.validate()

    @classmethod
    def load(cls, path: str) -> RunSpec:
        """Read spec.json; one-line BadInput when it is missing or malformed."""
        try:
            with open(path, "rb") as f:
                d = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            raise BadInput(f"{path} does not exist: is this a run directory?") from None
        except (UnicodeDecodeError, ValueError):
            raise BadInput(f"{path} is not valid JSON") from None
        if not isinstance(d, dict):
            raise BadInput(f"{path} is not a JSON object")
        return cls.from_dict(d)
