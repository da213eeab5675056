"""Classifies how a trainer ended (design section 6) from evidence on the box: exit, cgroup, this run's log, alerts."""

from __future__ import annotations

import re
from typing import List, NamedTuple, Optional

from rgt.shared.states import POLICIES, FailureClass

_F = FailureClass
CUDA_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED")
DISK_TEXT = re.compile(r"No space left on device|ENOSPC|iostream error|unexpected pos|Errno 28")
CONFIG_TEXT = re.compile(
    r"\b(ModuleNotFoundError|ImportError|SyntaxError|KeyError|FileNotFoundError|IndentationError|"
    r"NameError)\b|^usage: |error: (unrecognized arguments|the following arguments are required)"
)
TRACEBACK = re.compile(r"^Traceback \(most recent call last\)")
# Errors that repeat identically on every launch: python cannot find or parse the program.
CANT_OPEN = re.compile(r"can't open file .*\[Errno \d+\]|^rgt: cannot start ")  # only ever at start-up
CANT_START = re.compile(r": command not found$|: No such file or directory$|: Permission denied$")
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))(?::|$)")
IMPORT_OR_SYNTAX = ("ModuleNotFoundError", "ImportError", "SyntaxError", "IndentationError", "TabError")
NOT_FOUND_EXIT_CODES = (126, 127)  # the shell's "not executable" and "command not found"
STEP_IN_TEXT = re.compile(r"\bstep[ =:]+(\d+)")


class Evidence(NamedTuple):
    """Everything the classifier may look at for one ended attempt."""

    exit_code: Optional[int]
    signal: Optional[str]
    runtime_s: float
    tail: List[str]
    start_grace_s: float
    oom_kills_before: Optional[int] = None
    oom_kills_after: Optional[int] = None
    mem_peak_bytes: Optional[int] = None
    mem_limit_bytes: Optional[int] = None
    disk_free_bytes: Optional[int] = None
    inodes_free: Optional[int] = None
    nan_seen: bool = False
    step: Optional[int] = None
    gpu_fault: Optional[str] = None
    new_incarnation: bool = False
    stalled: Optional[str] = None
    completion_ok: Optional[bool] = None  # None: the spec names no completion evidence
    attempt: Optional[int] = None


class Verdict(NamedTuple):
    """The class (None means success), its one-line evidence and its remediation."""

    failure: Optional[FailureClass]
    evidence: str

    @property
    def remediation(self) -> Optional[str]:
        """The fixed remediation line of the class."""
        return POLICIES[self.failure].remediation if self.failure else None


def _last(pattern: re.Pattern[str], tail: List[str]) -> Optional[str]:
    for line in reversed(tail):
        if pattern.search(line):
            return line.strip()[:300]
    return None


def _final_exception(tail: List[str]) -> Optional[str]:
    """The exception line python printed last (the one that ended the program), or None."""
    for line in reversed(tail[-60:]):
        text = line.strip()
        if EXCEPTION_LINE.match(text):
            return text[:300]
    return None


def _deterministic(ev: Evidence) -> Optional[str]:
    """Evidence that this launch would fail the same way every time (config_error), or None."""
    if ev.exit_code in NOT_FOUND_EXIT_CODES and ev.signal is None:
        line = (_last(CANT_OPEN, ev.tail) or _last(CANT_START, ev.tail)
                or next((t.strip() for t in reversed(ev.tail) if t.strip()), ""))
        what = "not executable" if ev.exit_code == 126 else "command not found"
        return f"exit code {ev.exit_code} ({what}){': ' + line[:300] if line else ''}"
    line = _last(CANT_OPEN, ev.tail[-5:]) or (
        _last(CANT_START, ev.tail[-20:]) if ev.runtime_s <= ev.start_grace_s else None)
    if line:
        return f"{_how(ev)} after {ev.runtime_s:.1f}s: {line}"
    exc = _final_exception(ev.tail)
    if exc and exc.split(":")[0].rsplit(".", 1)[-1] in IMPORT_OR_SYNTAX and (
            ev.attempt in (None, 1) or ev.runtime_s <= ev.start_grace_s):
        return f"{_how(ev)} after {ev.runtime_s:.1f}s: {exc}"
    return None


def _how(ev: Evidence) -> str:
    return f"signal {ev.signal}" if ev.signal else f"exit code {ev.exit_code}"


def classify(ev: Evidence) -> Verdict:
    """Map one end to a class; the order encodes which evidence wins."""
    how = _how(ev)
    if ev.new_incarnation:
        return Verdict(_F.PREEMPTED, "the box restarted (new incarnation) while the trainer ran")
    if ev.stalled:
        return Verdict(_F.STALLED, ev.stalled)
    if ev.gpu_fault:
        return Verdict(_F.GPU_FAULT, f"{how}; {ev.gpu_fault}")
    killed = ev.signal == "SIGKILL" or ev.exit_code == 137
    oom_rose = (
        ev.oom_kills_after is not None and ev.oom_kills_before is not None
        and ev.oom_kills_after > ev.oom_kills_before
    )
    at_limit = bool(ev.mem_limit_bytes and ev.mem_peak_bytes and ev.mem_peak_bytes >= ev.mem_limit_bytes)
    if killed and (oom_rose or at_limit):
        return Verdict(_F.OOM_HOST, (
            f"{how}; cgroup oom_kill {ev.oom_kills_before} -> {ev.oom_kills_after}; "
            f"peak {ev.mem_peak_bytes} of limit {ev.mem_limit_bytes} bytes"))
    failed = ev.exit_code != 0 or ev.signal is not None
    config = _deterministic(ev) if failed else None
    if config:
        return Verdict(_F.CONFIG_ERROR, config)
    line = _last(CUDA_OOM, ev.tail)
    if failed and line:
        m = STEP_IN_TEXT.search(" ".join(ev.tail[-50:]))
        step = ev.step if ev.step is not None else (int(m.group(1)) if m else None)
        hint = " (step 2: optimizer state)" if step == 2 else ""
        return Verdict(_F.OOM_CUDA, f"{how} at step {step}{hint}: {line}")
    line = _last(DISK_TEXT, ev.tail)
    if failed and line:
        inode = ev.inodes_free is not None and ev.inodes_free == 0
        if inode or (ev.disk_free_bytes is not None and ev.disk_free_bytes > 0 and ev.inodes_free is not None
                     and ev.inodes_free < 16):
            return Verdict(_F.INODE_FULL, f"{how}; {ev.inodes_free} inodes free: {line}")
        return Verdict(_F.DISK_FULL, f"{how}; {ev.disk_free_bytes} bytes free: {line}")
    if failed and ev.nan_seen:
        return Verdict(_F.NAN, f"{how}; loss went NaN/inf before the end")
    line = _last(CONFIG_TEXT, ev.tail)
    if failed and line and ev.runtime_s <= ev.start_grace_s:
        return Verdict(_F.CONFIG_ERROR, f"{how} after {ev.runtime_s:.1f}s: {line}")
    if ev.signal == "SIGTERM" or ev.exit_code == 143:
        return Verdict(_F.PREEMPTED, f"{how}: SIGTERM from outside the agent")
    if not failed:
        if ev.completion_ok is False:
            return Verdict(_F.CRASHED, "exit code 0, but the completion evidence named in the spec is missing")
        line = _last(TRACEBACK, ev.tail[-20:])
        if line and ev.completion_ok is None:
            return Verdict(_F.CRASHED, "exit code 0, but a traceback is in the last lines of the log")
        return Verdict(None, "exit code 0")
    last = next((t.strip() for t in reversed(ev.tail) if t.strip()), "")
    return Verdict(_F.CRASHED, f"{how}; last line: {last[:300]}")
