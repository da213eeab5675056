"""The run registry on the laptop: one JSON file per run (host, destination, remote root, profile, last status)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from rgt.shared.atomic import atomic_write_json
from rgt.shared.errors import BadInput, RgtError
from rgt.shared.paths import validate_run_id

from .state import state_dir

MAX_RECORD_BYTES = 16 << 20


@dataclass
class RunRecord:
    """What the laptop remembers about one run."""

    run_id: str
    host: str  # "local" or the ssh destination as typed
    root: str  # $RGT_ROOT on the box
    profile: str = "local"
    port: Optional[int] = None
    ssh_config: Optional[str] = None
    python: Optional[str] = None
    pull_dest: Optional[str] = None
    created_at: float = field(default_factory=time.time)
    last_status: Optional[Dict[str, Any]] = None
    last_seen_at: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> str:
        """The run's directory on the box."""
        return f"{self.root}/runs/{self.run_id}"


class Registry:
    """Reads and writes run records under the state dir."""

    def __init__(self, base: Optional[Path] = None) -> None:
        self.dir = (base or state_dir()) / "runs"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, run_id: str) -> Path:
        return self.dir / f"{validate_run_id(run_id)}.json"

    def save(self, rec: RunRecord) -> None:
        """Write one record atomically (0600)."""
        atomic_write_json(str(self._path(rec.run_id)), asdict(rec), 0o600)

    def get(self, run_id: str) -> RunRecord:
        """The record of ``run_id``; BadInput when unknown."""
        path = self._path(run_id)
        try:
            if path.stat().st_size > MAX_RECORD_BYTES:
                raise RgtError(f"the registry entry {path} is over {MAX_RECORD_BYTES >> 20} MiB (a status a box sent "
                               "before rgt capped it?): remove it and `rgt attach` again")
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise BadInput(f"unknown run {run_id!r}: see `rgt runs`, or `rgt attach HOST {run_id}`") from None
        except (ValueError, RecursionError):
            raise RgtError(f"the registry entry {path} is corrupt; remove it and `rgt attach` again") from None
        if not isinstance(d, dict):
            raise RgtError(f"the registry entry {path} is corrupt; remove it and `rgt attach` again")
        names = set(RunRecord.__dataclass_fields__)
        rec = RunRecord(**{k: v for k, v in d.items() if k in names})
        from .boundary import stored_status  # a status saved before it was checked is dropped, never trusted

        rec.last_status = stored_status(rec.last_status)
        rec.extra = rec.extra if isinstance(rec.extra, dict) else {}
        return rec

    def all(self) -> List[RunRecord]:
        """Every record, newest first; corrupt files are skipped."""
        out = []
        for path in self.dir.glob("*.json"):
            try:
                out.append(self.get(path.stem))
            except RgtError:
                continue
        return sorted(out, key=lambda r: r.created_at, reverse=True)

    def newest(self) -> RunRecord:
        """The newest run, for commands whose RUN is omitted."""
        runs = self.all()
        if not runs:
            raise BadInput("no runs yet: start one with `rgt up local -- CMD` or `rgt demo`")
        return runs[0]
