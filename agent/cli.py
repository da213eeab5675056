"""The agent archive's command line on the box: daemon, waiter, stop, probe, status, manifest, doctor, verify-ckpt."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

from rgt.shared.atomic import atomic_write_json
from rgt.shared.errors import RgtError
from rgt.shared.paths import RunPaths


def _paths(run_dir: str) -> RunPaths:
    if not os.path.isfile(os.path.join(run_dir, "spec.json")):
        raise RgtError(f"{run_dir} is not a run directory (no spec.json)")
    return RunPaths(os.path.abspath(run_dir))


def cmd_daemon(a: argparse.Namespace) -> int:
    """Supervise the run."""
    from . import daemon

    return daemon.main(_paths(a.run_dir), resume=a.resume)


def cmd_waiter(a: argparse.Namespace) -> int:
    """Start the trainer and record its end."""
    from . import waiter

    return waiter.main(_paths(a.run_dir), a.attempt, a.resume_from, a.lock_fd, a.cell)


def cmd_stop(a: argparse.Namespace) -> int:
    """Stop the run."""
    from . import stop

    return stop.main(_paths(a.run_dir), a.reason, a.wait_s)


def cmd_probe(a: argparse.Namespace) -> int:
    """Print who holds the run (agent lock, pid, start time) as JSON."""
    from . import probe

    return probe.main(_paths(a.run_dir))


def cmd_status(a: argparse.Namespace) -> int:
    """Print status.json."""
    paths = _paths(a.run_dir)
    try:
        with open(paths.status, "rb") as f:
            sys.stdout.write(f.read().decode("utf-8") + "\n")
    except FileNotFoundError:
        raise RgtError(f"{paths.status} does not exist yet: the agent has not written a heartbeat") from None
    return 0


def cmd_manifest(a: argparse.Namespace) -> int:
    """Build manifest.json."""
    from . import manifest

    return manifest.main(_paths(a.run_dir))


def cmd_doctor(a: argparse.Namespace) -> int:
    """Print the pre-flight audit as JSON."""
    from . import doctor

    dirs = {"run": a.run_dir}
    python = sys.executable
    if os.path.isfile(os.path.join(a.run_dir, "spec.json")):
        from rgt.shared.spec import RunSpec

        from .launch import ckpt_dir

        spec = RunSpec.load(os.path.join(a.run_dir, "spec.json"))
        paths = RunPaths(os.path.abspath(a.run_dir))
        dirs["ckpt"] = ckpt_dir(spec, paths)
        if spec.durable_dir:
            dirs["durable"] = spec.durable_dir
        if spec.env.get("HF_HOME"):
            dirs["hf_cache"] = spec.env["HF_HOME"]
        python = spec.python or python
    print(json.dumps(doctor.run_doctor(dirs, python=a.python or python)))
    return 0


def cmd_reap(a: argparse.Namespace) -> int:
    """List (or kill) proven GPU holders outside the run."""
    from . import reap

    return reap.main(_paths(a.run_dir), a.kill or [], a.min_age_s, a.device_prefix)


def cmd_verify_ckpt(a: argparse.Namespace) -> int:
    """Safe-load checkpoints."""
    from .ckpt import verify

    return verify.main(a.paths)


def build_parser() -> argparse.ArgumentParser:
    """The archive's subcommands; each takes the run directory."""
    p = argparse.ArgumentParser(prog="rgt-agent", description="rgt agent (runs on the GPU box)")
    sub = p.add_subparsers(dest="cmd")
    d = sub.add_parser("daemon", help="supervise a run (one per run; exits 0 if one already runs)")
    d.add_argument("run_dir")
    d.add_argument("--resume", action="store_true", help="continue a FAILED or STOPPED run")
    d.set_defaults(fn=cmd_daemon)
    w = sub.add_parser("waiter", help="(internal) start the trainer and record its end")
    w.add_argument("run_dir")
    w.add_argument("--attempt", type=int, required=True)
    w.add_argument("--resume-from")
    w.add_argument("--lock-fd", type=int)
    w.add_argument("--cell", type=int, help="the queue cell or stage to run (1-based)")
    w.set_defaults(fn=cmd_waiter)
    s = sub.add_parser("stop", help="stop the run: SIGTERM, grace deadline, SIGKILL")
    s.add_argument("run_dir")
    s.add_argument("--reason", default="stopped by the user")
    s.add_argument("--wait-s", type=float, default=0.0)
    s.set_defaults(fn=cmd_stop)
    pr = sub.add_parser("probe", help="who holds the run now: agent lock, pid and start time, as JSON")
    pr.add_argument("run_dir")
    pr.set_defaults(fn=cmd_probe)
    st = sub.add_parser("status", help="print status.json")
    st.add_argument("run_dir")
    st.set_defaults(fn=cmd_status)
    m = sub.add_parser("manifest", help="build manifest.json from the run's roster")
    m.add_argument("run_dir")
    m.set_defaults(fn=cmd_manifest)
    dr = sub.add_parser("doctor", help="pre-flight audit of this box, as JSON")
    dr.add_argument("run_dir", nargs="?", default=".")
    dr.add_argument("--python", help="the trainer's python, whose torch is probed")
    dr.set_defaults(fn=cmd_doctor)
    r = sub.add_parser("reap", help="list processes proven to hold a GPU device; --kill PID:START kills those")
    r.add_argument("run_dir")
    r.add_argument("--kill", action="append", metavar="PID:START_TIME")
    r.add_argument("--min-age-s", type=float, default=120.0)
    r.add_argument("--device-prefix", default="/dev/nvidia")
    r.set_defaults(fn=cmd_reap)
    v = sub.add_parser("verify-ckpt", help="(internal) safe-load checkpoints, one JSON line each")
    v.add_argument("paths", nargs="+")
    v.set_defaults(fn=cmd_verify_ckpt)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the archive; errors for people are one line on stderr."""
    args = build_parser().parse_args(argv)
    if not getattr(args, "fn", None):
        build_parser().print_usage(sys.stderr)
        return 2
    try:
        return args.fn(args)
    except RgtError as e:
        print(f"rgt agent: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def request_stop(paths: RunPaths, reason: str) -> None:
    """Leave a stop request for the agent to act on at its next tick."""
    os.makedirs(paths.control, exist_ok=True)
    atomic_write_json(paths.stop_request, {"reason": reason, "at": time.time()})
