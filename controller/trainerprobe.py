"""Before a run starts (laptop): ask the box which python will verify checkpoints and whether it has torch.

The box runs agent/trainerpy.py from the archive with the spec on stdin; its one JSON line is untrusted
and read with bounds. No python at all for an explicit --trainer-python refuses the run (exit 2); a python
without torch is a warning: the run trains, but its checkpoints stay unverified.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Optional

from rgt.shared.errors import BadInput

PROBE = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from rgt.agent.trainerpy import probe_main; probe_main()")
MAX_REPLY_BYTES = 8192


def probe(transport: Any, archive: str, agent_python: str, code_dir: str, spec_json: bytes) -> Optional[Dict]:
    """The box's answer as {python, how, exists, torch}, or None when the probe itself did not work."""
    res = transport.run([agent_python, "-I", "-c", PROBE, archive, code_dir], input=spec_json, timeout_s=120)
    if res.rc != 0:
        return None
    try:
        d = json.loads(res.out[-MAX_REPLY_BYTES:].decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    if not isinstance(d, dict) or not isinstance(d.get("python"), str):
        return None
    return {"python": d["python"][:300], "how": d.get("how") if d.get("how") in ("explicit", "command", "agent")
            else "command", "exists": d.get("exists") is True, "torch": d.get("torch") if isinstance(
                d.get("torch"), bool) else None}


def judge(found: Optional[Dict], host: str, say: Callable[[str], None]) -> None:
    """Refuse a missing explicit --trainer-python; warn when the verifying python has no torch."""
    if found is None:
        return  # the probe could not run: the agent's own checks still report unverifiable checkpoints
    from rgt.controller.boundary import clean

    py = clean(found["python"])
    if not found["exists"]:
        if found["how"] == "explicit" and (py.startswith("/") or "/" not in py):  # not one the code brings
            raise BadInput(f"--trainer-python {py} is not on {host}: give the path of the python that has "
                           "torch there (e.g. /opt/conda/bin/python)")
        say(f"warning: the trainer's python {py} (from the command) is not on {host} yet; if it is not "
            "created before training, checkpoints stay unverified: pass --trainer-python PATH")
        return
    if found["torch"] is False:
        what = {"explicit": "--trainer-python", "command": "the command's python",
                "agent": "the agent's python (no python found in the command)"}[found["how"]]
        say(f"warning: {what} {py} cannot import torch on {host}, so rgt cannot verify checkpoints; "
            "pass --trainer-python PATH (the python your training runs with)")


def check(app: Any, transport: Any, spec: Any, host: str, python: Optional[str], candidates: list) -> None:
    """`rgt up`'s check before anything is copied: the verifying python exists and has torch."""
    from rgt.controller import launch

    if transport.exists(f"{transport.root}/runs/{spec.run_id}/spec.json"):
        return  # `rgt up` refuses this run id next; a warning about its python would only be noise
    agent_python = python or transport.find_python(candidates)[0]
    archive = launch.ensure_pyz(transport, transport.root)
    doc = json.loads(spec.to_json())
    doc["python"] = doc.get("python") or agent_python
    code_dir = f"{transport.root}/runs/{spec.run_id}/code"
    judge(probe(transport, archive, agent_python, code_dir, json.dumps(doc).encode()), host, app.info)
