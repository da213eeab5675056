"""A hostile box for tests: a run built by hand behind the real sshd, with the box's python replaced by a shim.

The shim is what a stranger's machine can do: it answers the agent archive's `manifest` command with a
manifest the test chose (any bytes), and runs everything else with the real python. status.json, the
journal, logs and files are planted in the run dir directly. The laptop side is the real `rgt`.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

from rgt.controller.registry import Registry, RunRecord
from rgt.shared.manifest import Entry, Manifest
from tests.fake_providers import make_run, sha

SHIM = """#!{python}
import os, sys
args = sys.argv[1:]
if "manifest" in args:
    run_dir = args[args.index("manifest") + 1]
    served = os.path.join(run_dir, ".hostile-manifest")
    if os.path.exists(served):
        with open(served, "rb") as f:
            raw = f.read()
        with open(os.path.join(run_dir, "manifest.json"), "wb") as f:
            f.write(raw)
        with open(served + ".words") as f:
            sys.stdout.write(f.read())
        sys.exit(0)
os.execv({python!r}, [{python!r}] + args)
"""


class HostileBox:
    """One run on the sshd box whose answers the test controls."""

    def __init__(self, sshbox: Any, state: str, run_id: str, artifacts: Optional[Dict[str, bytes]] = None,
                 checkpoints: Optional[Dict[str, bytes]] = None, marker: Optional[str] = "DONE") -> None:
        self.sshbox, self.state, self.run_id = sshbox, state, run_id
        self.root = Path(sshbox.home) / ".rgt"
        self.paths = make_run(self.root, run_id, artifacts or {"out/a.bin": b"a" * 100}, checkpoints, marker)
        self.run_dir = Path(self.paths.root)
        self.shim = Path(sshbox.dir) / "hostile-python"
        self.shim.write_text(SHIM.format(python=sshbox.python))
        os.chmod(self.shim, 0o755)
        self.own()
        self.rec = RunRecord(run_id=run_id, host=sshbox.alias, root=str(self.root), profile="generic-ssh",
                             ssh_config=str(sshbox.ssh_config), python=str(self.shim))
        Registry(Path(state)).save(self.rec)

    def own(self) -> None:
        """Give the box's files to the box's login (the tests run as root, the sshd login may not)."""
        if self.sshbox.user is not None:
            subprocess.run(["chown", "-R", f"{self.sshbox.user}:{self.sshbox.user}", str(self.root)], check=True)

    def write(self, rel: str, data: bytes) -> Path:
        """Plant a file in the run dir."""
        path = self.run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.own()
        return path

    def serve_manifest(self, raw: bytes, words: Optional[str] = None) -> None:
        """Make the box's `manifest` command answer with these bytes (and this stdout line)."""
        if words is None:
            words = f"{'0' * 64} 1 final\n"
        self.write(".hostile-manifest", raw)
        self.write(".hostile-manifest.words", words.encode())

    def serve_entries(self, entries: List[Dict[str, Any]]) -> Manifest:
        """A well-formed manifest of these entries (each must be valid), served with its true hash."""
        m = Manifest(run_id=self.run_id, entries=[Entry(**e) for e in entries], created_at=1.0)
        self.serve_manifest(m.to_json(), f"{m.sha256} {len(m.entries)} final\n")
        return m

    def entry(self, rel: str, kind: str = "artifact") -> Dict[str, Any]:
        """The manifest entry of a file planted in the run dir, with its true size and hash."""
        data = (self.run_dir / rel).read_bytes()
        return {"path": rel, "size_bytes": len(data), "sha256": sha(data), "kind": kind, "pruned": False}

    def status(self, doc: Any) -> None:
        """Plant status.json (a dict is dumped as JSON; bytes are written as they are)."""
        self.write("status.json", doc if isinstance(doc, bytes) else json.dumps(doc).encode())

    def archive(self) -> Optional[Path]:
        """The agent archive rgt put on the box, if any."""
        found = sorted((self.root / "agent").glob("*.pyz")) if (self.root / "agent").is_dir() else []
        return found[0] if found else None

    def close(self) -> None:
        """Remove the run (the box's home is shared by the session's tests)."""
        shutil.rmtree(self.run_dir, ignore_errors=True)


def good_status(run_id: str, **over: Any) -> Dict[str, Any]:
    """A status.json as the agent writes it, with fields replaced."""
    import time

    from rgt.shared.status import Status

    d = Status(run_id=run_id, state="succeeded", updated_at=time.time(), seq=3).to_dict()
    d.update(over)
    return d


def is_executable(path: Path) -> bool:
    """True when ``path`` is an executable file."""
    return path.is_file() and bool(path.stat().st_mode & stat.S_IXUSR)
