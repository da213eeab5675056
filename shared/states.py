"""Run states, the legal transitions between them, and failure classes with their one policy each."""

from __future__ import annotations

import enum
from typing import Dict, FrozenSet, NamedTuple, Optional


class RunState(str, enum.Enum):
    """The agent's view of a run; written into status.json as ``state``."""

    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        """True for states that end a run (a completion marker exists)."""
        return self in TERMINAL_STATES


TERMINAL_STATES: FrozenSet[RunState] = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.STOPPED})

_S = RunState
# Every transition the agent may make; anything else is a bug and raises.
TRANSITIONS: Dict[RunState, FrozenSet[RunState]] = {
    # UNKNOWN is where a (re)started agent begins before it knows what is on the box.
    _S.UNKNOWN: frozenset({_S.STARTING, _S.RUNNING, _S.BACKOFF, _S.STOPPING, *TERMINAL_STATES}),
    _S.STARTING: frozenset({_S.RUNNING, _S.BACKOFF, _S.STOPPING, *TERMINAL_STATES}),
    _S.RUNNING: frozenset({_S.BACKOFF, _S.STOPPING, *TERMINAL_STATES}),
    _S.BACKOFF: frozenset({_S.STARTING, _S.STOPPING, _S.FAILED, _S.STOPPED}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.FAILED, _S.SUCCEEDED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.STOPPED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A transition outside TRANSITIONS was attempted."""


def check_transition(old: RunState, new: RunState) -> None:
    """Raise IllegalTransition unless ``old -> new`` is in the table."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old.value} -> {new.value} is not a legal transition")


class FailureClass(str, enum.Enum):
    """Why a trainer ended badly (design section 6)."""

    OOM_HOST = "oom_host"
    OOM_CUDA = "oom_cuda"
    NAN = "nan"
    DISK_FULL = "disk_full"
    INODE_FULL = "inode_full"
    PREEMPTED = "preempted"
    STALLED = "stalled"
    CONFIG_ERROR = "config_error"
    GPU_FAULT = "gpu_fault"
    DISK_GATE_ABORT = "disk_gate_abort"
    SYNC_FAILED = "sync_failed"
    CRASHED = "crashed"


class Policy(NamedTuple):
    """What the supervisor does about one failure class."""

    retries: Optional[int]  # None: bounded only by max_restarts; 0: never; 1: once
    costs_budget: bool
    remediation: str


_F = FailureClass
POLICIES: Dict[FailureClass, Policy] = {
    _F.OOM_HOST: Policy(0, True, "host memory ran out: lower the batch size or the dataloader workers"),
    _F.OOM_CUDA: Policy(
        0, True, "GPU memory ran out: lower the batch, use gradient accumulation or activation checkpointing"
    ),
    _F.NAN: Policy(0, True, "loss went NaN/inf: resume from the last finite checkpoint with a lower LR"),
    _F.DISK_FULL: Policy(1, True, "the disk filled up: free space (see the paths and sizes) or get a bigger disk"),
    _F.INODE_FULL: Policy(1, True, "the filesystem ran out of inodes: delete many small files or move them"),
    _F.PREEMPTED: Policy(None, False, "none needed: the run resumes by itself from the newest verified checkpoint"),
    _F.STALLED: Policy(None, True, "no progress: the trainer's group was killed and resumed; see the stack dump"),
    _F.CONFIG_ERROR: Policy(0, True, "fix the error line in your code or config, then `rgt resume`"),
    _F.GPU_FAULT: Policy(0, True, "the GPU is faulty (Xid 48/79, lost, or uncorrectable ECC): replace the box"),
    _F.DISK_GATE_ABORT: Policy(0, True, "free disk space or inodes (see what to free), or use a bigger disk"),
    # The copy itself is retried once inside the sync gate; rerunning the training would not fix it.
    _F.SYNC_FAILED: Policy(0, True, "the durable copy or the manifest failed: check the path and the error"),
    _F.CRASHED: Policy(None, True, "see the last lines (`rgt logs`); crashes resume with backoff up to max_restarts"),
}
