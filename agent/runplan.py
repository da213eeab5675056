"""What the agent runs next on the box: adopt or launch at start-up, the disk gate, cells one after another."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Tuple

from rgt.shared.journal import Journal, read_journal
from rgt.shared.paths import RunPaths
from rgt.shared.spec import RunSpec
from rgt.shared.states import POLICIES, FailureClass, RunState
from rgt.shared.status import LastFailure

from . import launch
from .cells import CellBook, cell_dir, disk_gate
from .runner import WaiterRunner, read_record
from .supervisor import LaunchRefused, Supervisor


class RunPlan:
    """The daemon's start-up and cell sequencing (a mixin: the daemon holds the state)."""

    paths: RunPaths
    spec: RunSpec
    journal: Journal
    runner: WaiterRunner
    sup: Supervisor
    book: Optional[CellBook]
    cell: Optional[Dict[str, Any]]
    final: Optional[Tuple[RunState, str]]
    builder: Any
    incarnation: str

    def _new_supervisor(self, cell: Optional[Dict[str, Any]], attempt: int) -> Supervisor:
        raise NotImplementedError

    # -- startup: adopt what an earlier agent left, or launch -----------------------------------------
    def _consumed_attempts(self) -> List[int]:
        return [r.get("attempt") for r in read_journal(self.paths.journal).records if r.get("kind") == "attempt_end"]

    def begin(self) -> None:
        """Decide between adopting a live trainer, finishing an ended attempt, and a fresh launch."""
        rec = read_record(self.paths.trainer_record)
        prev = self.builder.previous
        restarts = prev.trainer.restarts if prev and prev.state != "succeeded" else 0
        attempt = int(rec.get("attempt") or 0) if rec else 0
        if self.book is not None:
            self.cell = self.book.next_pending()
            if self.cell is None:
                self._conclude()
                return
            self._new_supervisor(self.cell, attempt)
            if rec is None or rec.get("cell") != self.cell["index"]:
                self._launch("first start of this cell" if rec else "first start")
                return
        elif rec is None:
            self._launch("first start")
            return
        self.runner.adopt(attempt)
        self.sup.attempt = attempt  # the next launch is attempt + 1: never a number the old exit.json has
        if self.book is None and self._restore_end(attempt):
            return
        if attempt in self._consumed_attempts():
            self.sup.restarts = restarts
            self.builder.drain_checkpoints()  # what the last attempt saved before it ended is a target too
            self._launch(f"agent restarted after attempt {attempt} ended; resuming")
            return
        if rec.get("incarnation") != self.incarnation:
            self.builder.new_incarnation = True
        self.sup.adopt(attempt, restarts, f"agent restarted; adopting attempt {attempt} (trainer pid {rec.get('pid')})")

    def _restore_end(self, attempt: int) -> bool:
        """The run had ended but its marker is missing (the agent died before writing it): finish, never rerun."""
        records = read_journal(self.paths.journal).records
        end = journaled_end(records)
        if end is None:
            return False
        failure = next((r for r in reversed(records) if r.get("kind") == "failure"), None)
        if end["new"] == "failed" and failure is not None:
            fc = FailureClass(failure["class"])
            self.sup.last_failure = LastFailure(fc.value, failure.get("evidence"), POLICIES[fc].remediation,
                                                failure.get("t"))
        self.sup.transition(RunState(end["new"]),  # UNKNOWN -> terminal
                            f"agent restarted after the run ended ({end.get('reason')}); writing its marker")
        return True

    def _launch(self, reason: str) -> None:
        """The disk gate, then the next attempt of the current cell (or of the plain run)."""
        dirs = [self.paths.root, launch.ckpt_dir(self.spec, self.paths)]
        if self.cell is not None:
            dirs.append(os.path.dirname(cell_dir(self.paths, self.cell)))
        refusal = disk_gate(self.spec, [d for d in dirs if os.path.isdir(d)]).refusal
        if refusal is None:
            try:
                self.runner.ensure_leases()  # before the first status write, so `rgt up` sees a refusal
            except LaunchRefused as e:
                self.sup.last_failure = LastFailure(None, str(e), None, time.time())
                self.sup.transition(RunState.FAILED, f"refused before start: {e}")  # UNKNOWN -> FAILED
                return
        if refusal:
            fc = FailureClass.DISK_GATE_ABORT
            self.sup.last_failure = LastFailure(fc.value, refusal, POLICIES[fc].remediation, time.time())
            self.sup.transition(RunState.FAILED, f"{fc.value}: {refusal}")  # UNKNOWN -> FAILED
            return
        self.runner.cell = self.cell["index"] if self.cell else None
        if self.book is not None and self.cell is not None:
            self.book.set(self.cell["index"], state="running")
        self.sup.launch(reason)  # UNKNOWN -> STARTING

    def _after_supervisor(self) -> None:
        """A cell (or the plain run) reached a terminal state: record it, then next cell or the end."""
        sup, state = self.sup, self.sup.state
        if self.book is None or self.cell is None:
            self.final = (state, sup.final_reason)
            return
        lf = sup.last_failure
        index, name = self.cell["index"], self.cell["name"]
        self.book.set(index, state=state.value, exit_code=sup.last_end.exit_code if sup.last_end else None,
                      failure_class=lf.class_ if lf is not None and state == RunState.FAILED else None)
        if state == RunState.STOPPED:
            self.final = (state, f"stopped in cell {index} ({name}): {sup.final_reason}")
            return
        stage = self.spec.cells[index - 1].get("kind") == "stage"
        gated = lf is not None and lf.class_ == FailureClass.DISK_GATE_ABORT.value and state == RunState.FAILED
        if state == RunState.FAILED and (stage or gated):
            for c in self.book.cells:
                if c["state"] in ("pending", "running"):
                    self.book.set(c["index"], state="skipped")
            self._conclude()
            return
        self.cell = self.book.next_pending()
        if self.cell is None:
            self._conclude()
            return
        self._new_supervisor(self.cell, sup.attempt)
        self._launch(f"cell {index} ({name}) ended {state.value}; next cell")

    def _conclude(self) -> None:
        """The run's own end once every cell is done: failed if any cell failed, never "done" over failures."""
        assert self.book is not None
        failed = self.book.failed()
        if failed:
            names = ", ".join(f"{c['index']} ({c['name']}: {c['failure_class']})" for c in failed)
            self.final = (RunState.FAILED, f"failed cells: {names}")
        else:
            ran = [c for c in self.book.cells if c["state"] == "succeeded"]
            self.final = (RunState.SUCCEEDED, f"all {len(ran)} cells succeeded")
        self.journal.append("run_end", state=self.final[0].value, reason=self.final[1])


def reopen(paths: RunPaths) -> None:
    """`--resume`: a FAILED or STOPPED run may continue (its marker is kept aside); DONE never reruns."""
    marker = paths.existing_marker()
    if marker in ("FAILED", "STOPPED"):
        os.makedirs(os.path.join(paths.root, "markers"), exist_ok=True)
        os.replace(paths.marker(marker), os.path.join(paths.root, "markers", f"{marker}.{int(time.time())}.json"))
        if os.path.exists(paths.stop_request):
            os.unlink(paths.stop_request)
        Journal(paths.journal).append("reopened", marker=marker)


def journaled_end(records: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The run's last terminal transition, unless a `reopened` came after it (the marker may be missing)."""
    end = None
    for r in records:
        if r.get("kind") == "reopened":
            end = None
        elif r.get("kind") == "transition" and r.get("new") in ("succeeded", "failed", "stopped"):
            end = r
    return end
