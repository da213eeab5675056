"""Fakes for the pull, verify and down tests: runs built by hand on a local box, and fake provider APIs.

The APIs are local HTTP servers that speak vast.ai's and RunPod's JSON, including 401, 429, 500 and a
hanging endpoint.

Only the provider APIs are fake. The box is a real directory driven through the real agent archive,
rsync is the real binary and checkpoints are real torch files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional

from rgt.controller.registry import Registry, RunRecord
from rgt.shared.paths import BoxLayout, RunPaths
from rgt.shared.spec import RunSpec

# --- runs on a local box ---------------------------------------------------------------------------


def sha(data: bytes) -> str:
    """sha256 hex."""
    return hashlib.sha256(data).hexdigest()


def torch_bytes(step: int, nan: bool = False, pickle_only: bool = False) -> bytes:
    """A small real checkpoint: a state dict of tensors (NaN on request, or a class that needs unpickling)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's import note about NumPy
        import torch

    state: Dict[str, Any] = {"model": {"w": torch.full((4, 4), float(step)), "b": torch.zeros(4)}, "step": step}
    if nan:
        state["model"]["w"][0, 0] = float("nan")
    if pickle_only:
        state["extra"] = Opaque(step)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class Opaque:
    """A class torch's weights-only loader refuses."""

    def __init__(self, n: int) -> None:
        self.n = n


def write_index(paths: RunPaths, records: List[Dict[str, Any]]) -> None:
    """ckpt_index.json as the agent's checkpoint pipeline writes it."""
    doc = {"schema": 1, "run_id": paths.run_id, "ckpt_dir": "ckpt", "updated_at": time.time(), "records": records}
    Path(paths.root, "ckpt_index.json").write_text(json.dumps(doc))


def ckpt_record(paths: RunPaths, rel: str, state: str = "verified", pruned: bool = False,
                size: Optional[int] = None, digest: Optional[str] = None) -> Dict[str, Any]:
    """One index record for a file checkpoint at ``rel`` (relative to the run dir)."""
    full = os.path.join(paths.root, rel)
    rec: Dict[str, Any] = {"key": os.path.basename(rel), "path": rel, "is_dir": False, "state": state,
                           "pruned": pruned, "quarantined": None, "missing": False, "sidecar": None, "files": None}
    if os.path.exists(full):
        st = os.stat(full)
        data = Path(full).read_bytes()
        rec.update(size_bytes=st.st_size, sha256=sha(data), mtime_ns=st.st_mtime_ns, ino=st.st_ino)
    else:
        rec.update(size_bytes=size, sha256=digest, mtime_ns=None, ino=None)
    return rec


def add_checkpoint(paths: RunPaths, name: str, data: bytes, state: str = "verified") -> Dict[str, Any]:
    """Write ckpt/<name> and return its index record (the caller writes the index)."""
    full = Path(paths.root, "ckpt", name)
    full.parent.mkdir(parents=True, exist_ok=True)
    full.write_bytes(data)
    return ckpt_record(paths, f"ckpt/{name}", state)


def make_run(box: Path, run_id: str, artifacts: Optional[Dict[str, bytes]] = None,
             checkpoints: Optional[Dict[str, bytes]] = None, marker: Optional[str] = "DONE",
             globs: Optional[List[str]] = None) -> RunPaths:
    """A run directory as the agent leaves it: spec, code/ artifacts, indexed checkpoints, log, marker."""
    paths = BoxLayout(str(box)).run(run_id)
    os.makedirs(os.path.join(paths.root, "code"), exist_ok=True)
    os.makedirs(paths.logs, exist_ok=True)
    spec = RunSpec(run_id=run_id, command=["python3", "train.py"], artifacts=globs or ["out/*"],
                   python=sys.executable, created_at=time.time())
    Path(paths.spec).write_bytes(spec.to_json())
    for rel, data in (artifacts or {}).items():
        full = Path(paths.code, rel)
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(data)
    records = [add_checkpoint(paths, name, data) for name, data in (checkpoints or {}).items()]
    write_index(paths, records)
    Path(paths.trainer_log).write_text("step=1 loss=0.5\n")
    if marker:
        finish(paths, marker)
    return paths


def finish(paths: RunPaths, marker: str = "DONE") -> None:
    """End the run: exit.json and the completion marker."""
    Path(paths.exit).write_text(json.dumps({"exit_code": 0, "attempt": 1}))
    Path(paths.marker(marker)).write_text(json.dumps({"run_id": paths.run_id, "state": "succeeded"}))


def register(state: Path, box: Path, run_id: str, profile: str = "local") -> RunRecord:
    """The laptop's registry entry for a run on the local box."""
    rec = RunRecord(run_id=run_id, host="local", root=str(box), profile=profile, python=sys.executable)
    Registry(state).save(rec)
    return rec


def run_cli(capsys, *args: str, stdin: str = "") -> tuple:
    """`rgt ARGS` in this process (torch is imported once for all tests): (exit code, stdout, stderr)."""
    from rgt.controller.cli import main

    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return code, out, err


# --- provider APIs ---------------------------------------------------------------------------------


class FakeApi:
    """vast.ai (/api/v0) and RunPod (/v1) on 127.0.0.1, with scripted failures.

    ``fail[(METHOD, prefix)]`` is a list of status codes served (and consumed) before the real answer;
    ``hang`` holds (METHOD, prefix) pairs that never answer until the server stops; an instance
    disappears ``polls_until_gone`` GETs after its DELETE.
    """

    def __init__(self, key: str = "test-key-123") -> None:
        self.key = key
        self.vast: Dict[str, Dict[str, Any]] = {}
        self.pods: Dict[str, Dict[str, Any]] = {}
        self.volumes: List[Dict[str, Any]] = []
        self.network_volumes: List[Dict[str, Any]] = []
        self.fail: Dict[tuple, List[int]] = {}
        self.hang: set = set()
        self.polls_until_gone = 2
        self.never_gone = False
        self.requests: List[tuple] = []
        self._deleted: Dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, code: int, body: Any = None, headers: Optional[Dict[str, str]] = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                path = self.path.split("?", 1)[0]
                with api._lock:
                    api.requests.append((self.command, self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Bearer {api.key}":
                    return self._send(401, {"error": "invalid api key"})
                for (method, prefix) in list(api.hang):
                    if method == self.command and path.startswith(prefix):
                        api._stop.wait(60)
                        return None
                for (method, prefix), codes in api.fail.items():
                    if method == self.command and path.startswith(prefix) and codes:
                        code = codes.pop(0)
                        return self._send(code, {"error": f"scripted {code}"}, {"Retry-After": "0"})
                code, body = api.route(self.command, path)
                return self._send(code, body)

            do_GET = do_DELETE = do_PUT = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def _gone(self, iid: str) -> bool:
        if iid not in self._deleted or self.never_gone:
            return False
        self._deleted[iid] += 1
        return self._deleted[iid] > self.polls_until_gone

    def route(self, method: str, path: str) -> tuple:
        """The documented JSON of the endpoints rgt uses."""
        parts = [p for p in path.split("/") if p]
        with self._lock:
            if parts[:2] == ["api", "v0"] and len(parts) == 4 and parts[2] == "instances":
                iid = parts[3]
                if iid not in self.vast:
                    return 404, {"success": False, "error": "no_such_instance", "msg": "Instance not found"}
                if method == "DELETE":
                    self._deleted.setdefault(iid, 0)
                    self.vast[iid]["intended_status"] = "stopped"
                    return 200, {"success": True}
                if self._gone(iid):
                    return 200, {"instances": None}
                return 200, {"instances": dict(self.vast[iid])}
            if parts[:3] == ["api", "v0", "volumes"]:
                return 200, {"volumes": self.volumes}
            if parts[:2] == ["v1", "pods"] and len(parts) == 3:
                pid = parts[2]
                if pid not in self.pods:
                    return 404, {"error": "pod not found", "status": 404}
                if method == "DELETE":
                    self._deleted.setdefault(pid, 0)
                    return 204, None
                if self._gone(pid):
                    return 404, {"error": "pod not found", "status": 404}
                return 200, dict(self.pods[pid])
            if parts == ["v1", "networkvolumes"]:
                return 200, self.network_volumes
        return 404, {"error": f"no route {method} {path}"}


def vast_instance(iid: str) -> Dict[str, Any]:
    """A running vast.ai instance row (fields from vastai/data/instance.py)."""
    return {"id": int(iid), "actual_status": "running", "cur_state": "running", "intended_status": "running",
            "next_state": "running", "status_msg": "success, running", "ssh_host": "ssh4.vast.ai",
            "ssh_port": 12345, "dph_total": 0.42, "start_date": time.time() - 3600, "extra_env": []}


def runpod_pod(pid: str) -> Dict[str, Any]:
    """A running RunPod pod (REST /v1/pods/{id})."""
    return {"id": pid, "name": "rgt", "desiredStatus": "RUNNING", "costPerHr": 0.44, "volumeInGb": 20,
            "containerDiskInGb": 10, "volumeMountPath": "/workspace", "lastStatusChange": "Running"}
