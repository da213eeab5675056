"""Sweeps on the laptop: a grid of params, one run per cell under the agent, round-robin on SSH hosts or as Slurm jobs.

Each cell is an ordinary run (`<sweep>-<i>`, its params in the registry record's ``extra["sweep"]``), so
every other command works on it as well. The sweep itself is one JSON file in the state dir: the command
template, the grid, where cells may go and which run each cell is now (a reassigned cell is
`<sweep>-<i>-r<k>`, resumed from the newest checkpoint pulled from its lost run).
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from rgt.shared.atomic import atomic_write_json, read_json
from rgt.shared.errors import BadInput, RgtError, TransportError
from rgt.shared.paths import validate_run_id
from rgt.shared.spec import RunSpec

from .registry import RunRecord
from .state import state_dir
from .transport.base import Transport

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
STEP_RE = re.compile(r"(\d+)(?!.*\d)")
TERMINAL = ("succeeded", "failed", "stopped")
SPEC_OPTIONS = ("ckpt_dir", "artifacts", "tick_s", "max_restarts", "stall_after_s", "usd_per_hour")
Echo = Callable[[str], None]


def parse_grid(items: List[str]) -> List[Tuple[str, List[str]]]:
    """``["lr=1e-3,3e-4", "bs=32,64"]`` -> ``[("lr", ["1e-3", "3e-4"]), ("bs", ["32", "64"])]``."""
    grid: List[Tuple[str, List[str]]] = []
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        values = [v.strip() for v in raw.split(",")]
        if not sep or not NAME_RE.match(name) or not all(values):
            raise BadInput(f"bad --grid {item!r}: use NAME=v1,v2 (NAME a Python identifier, no empty values)")
        if name in (n for n, _ in grid) or len(set(values)) != len(values):
            raise BadInput(f"--grid {item!r}: a name or a value appears twice")
        grid.append((name, values))
    if not grid:
        raise BadInput("give at least one --grid NAME=v1,v2")
    return grid


def expand(grid: List[Tuple[str, List[str]]]) -> List[Dict[str, str]]:
    """Every combination, the first --grid varying slowest."""
    names = [n for n, _ in grid]
    return [dict(zip(names, combo)) for combo in itertools.product(*(v for _, v in grid))]


def fill(template: List[str], params: Dict[str, str]) -> List[str]:
    """``{name}`` in each argument replaced by the cell's value; other braces are left alone."""
    return [PLACEHOLDER_RE.sub(lambda m: params.get(m.group(1), m.group(0)), arg) for arg in template]


def check_template(template: List[str], grid: List[Tuple[str, List[str]]]) -> None:
    """Every grid name must appear in the command, else cells would repeat one run."""
    if not template:
        raise BadInput("no command: put it after `--`, with {name} where each grid value goes")
    used = {m for arg in template for m in PLACEHOLDER_RE.findall(arg)}
    unused = [n for n, _ in grid if n not in used]
    if unused:
        raise BadInput(f"the command never uses {{{unused[0]}}}: every value of {unused[0]} would run the same "
                       "command (put {" + unused[0] + "} where it goes)")


def parse_hosts(text: str, source: str) -> List[str]:
    """One ssh destination per line; blank lines and # comments are skipped."""
    hosts = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-") or len(line.split()) != 1:
            raise BadInput(f"{source}:{lineno}: {line!r} is not one ssh destination")
        hosts.append(line)
    if not hosts:
        raise BadInput(f"{source} lists no hosts (one ssh destination per line)")
    return hosts


@dataclass
class Sweep:
    """The sweep's file: what each cell runs, where cells may go, and which run each cell is now."""

    name: str
    command: List[str]
    grid: List[Any]
    hosts: List[str]
    profile: str
    slurm: Optional[str] = None  # the login host when cells are Slurm jobs
    options: Dict[str, Any] = field(default_factory=dict)
    cells: List[Dict[str, Any]] = field(default_factory=list)  # index, params, run_id, host, history, error
    created_at: float = field(default_factory=time.time)

    @staticmethod
    def path(name: str) -> str:
        """Where the sweep's file lives."""
        return str(state_dir() / "sweeps" / f"{validate_run_id(name)}.json")

    def save(self) -> None:
        """Atomically, 0600."""
        os.makedirs(os.path.dirname(self.path(self.name)), mode=0o700, exist_ok=True)
        atomic_write_json(self.path(self.name), asdict(self), 0o600)

    @classmethod
    def load(cls, name: str) -> Sweep:
        """BadInput naming the known sweeps when there is none of that name."""
        try:
            return cls(**read_json(cls.path(name)))
        except FileNotFoundError:
            known = ", ".join(sorted(n[:-5] for n in os.listdir(os.path.dirname(cls.path(name)))
                                     if n.endswith(".json"))) if os.path.isdir(os.path.dirname(cls.path(name))) else ""
            raise BadInput(f"no sweep named {name!r}" + (f"; known: {known}" if known else "")) from None
        except (OSError, ValueError, TypeError):
            raise RgtError(f"the sweep file {cls.path(name)} is unreadable") from None


def new_sweep(name: str, command: List[str], grid: List[Tuple[str, List[str]]], hosts: List[str], profile: str,
              slurm: Optional[str], options: Dict[str, Any]) -> Sweep:
    """A sweep with one pending cell per grid combination (nothing runs yet)."""
    check_template(command, grid)
    sw = Sweep(name=validate_run_id(name), command=list(command), grid=[[n, v] for n, v in grid], hosts=hosts,
               profile=profile, slurm=slurm, options=options)
    if os.path.exists(Sweep.path(name)):
        raise BadInput(f"sweep {name} exists already: pick another --name (see `rgt sweep status {name}`)")
    sw.cells = [{"index": i, "params": p, "run_id": None, "host": None, "history": [], "error": None}
                for i, p in enumerate(expand(grid), 1)]
    for c in sw.cells:
        validate_run_id(f"{name}-{c['index']}-r9")
    return sw


class _Quiet:
    """An app stand-in whose messages are dropped: the platform briefing is shown once per host, not per cell."""

    def __init__(self, app: Any) -> None:
        self.registry = app.registry

    @staticmethod
    def info(message: str) -> None:
        """Dropped."""


def launch_cell(app: Any, sw: Sweep, cell: Dict[str, Any], host: str, run_id: str, quiet: bool = False,
                before_start: Optional[Callable[[Transport, str], None]] = None,
                resume_rel: Optional[str] = None) -> RunRecord:
    """One cell as a run on ``host``, through `rgt up`'s own flow (profile, sync, pyz, agent or sbatch)."""
    from .commands.up import _apply_profile
    from .launch import UpRequest, up

    o = sw.options
    spec = RunSpec(run_id=run_id, command=fill(sw.command, cell["params"]), created_at=time.time(),
                   profile=sw.profile)
    for key in SPEC_OPTIONS:
        if o.get(key) is not None:
            setattr(spec, key, o[key])
    mark = {"name": sw.name, "index": cell["index"], "params": cell["params"], "of": len(sw.cells)}
    if cell.get("run_id") and cell["run_id"] != run_id:
        mark["replaces"] = cell["run_id"]
    spec.extra["sweep"] = dict(mark)
    if resume_rel:
        spec.extra["resume_from"] = resume_rel  # pushed into the run dir before the agent starts
    profile = _apply_profile(_Quiet(app) if quiet else app, spec, host, False)
    transport = app.transport_for(host, o.get("port"), o.get("ssh_config"))
    if host != "local" and profile.fast_dir and transport.exists(profile.fast_dir):
        transport = app.transport_for(host, o.get("port"), o.get("ssh_config"), root=f"{profile.fast_dir}/.rgt")
    req = UpRequest(host=host, spec=spec, code_dir=o["code_dir"], python=o.get("python"),
                    python_candidates=list(profile.python) or ["python3", "python"],
                    heartbeat_timeout_s=o.get("heartbeat_timeout_s") or 60.0, port=o.get("port"),
                    ssh_config=o.get("ssh_config"), scheduler_opts={"time": o.get("time"), "gpus": o.get("gpus")},
                    record_extra={"sweep": mark}, before_start=before_start)
    return up(app.registry, transport, req)


def start(app: Any, sw: Sweep, echo: Echo) -> int:
    """Place every cell round-robin; a host that cannot be reached gets no more cells. Returns cells not started."""
    places = [sw.slurm] if sw.slurm else list(sw.hosts)
    down: set = set()
    briefed: set = set()
    cursor = 0
    for cell in sw.cells:
        for _ in range(len(places)):
            host = places[cursor % len(places)]
            cursor += 1
            if host in down:
                continue
            run_id = f"{sw.name}-{cell['index']}"
            try:
                launch_cell(app, sw, cell, host, run_id, quiet=host in briefed)
            except TransportError as e:
                down.add(host)
                echo(f"{host} is unreachable ({e}); its cells go to the other hosts")
                continue
            except RgtError as e:
                cell["error"] = str(e)
                echo(f"cell {cell['index']} ({params_text(cell['params'])}) did not start on {host}: {e}")
                break
            briefed.add(host)
            cell.update(run_id=run_id, host=host, error=None)
            echo(f"cell {cell['index']} ({params_text(cell['params'])}): {run_id} on {host}")
            break
        else:
            cell["error"] = "no reachable host left"
        sw.save()
    return sum(1 for c in sw.cells if not c["run_id"])


def params_text(params: Dict[str, str]) -> str:
    """lr=1e-3 bs=32."""
    return " ".join(f"{k}={v}" for k, v in params.items())


def _pulled(rec: RunRecord) -> Optional[str]:
    """What is home: "verified" (the final manifest, with the marker), "partial" (checkpoints only) or None."""
    from .pull import default_dest
    from .verify import read_manifest, read_verified

    dest = rec.pull_dest or default_dest(rec.run_id)
    try:
        done = read_verified(dest)
        manifest = read_manifest(dest)[0] if done and done.get("run_id") == rec.run_id else None
    except (RgtError, OSError):
        return None
    if manifest is None:
        return None
    return "verified" if any(e.kind == "marker" for e in manifest.entries) else "partial"


def _row(app: Any, cell: Dict[str, Any]) -> Dict[str, Any]:
    from .observe import poll, remember
    from .slurmview import job_of, view_for

    row: Dict[str, Any] = {"index": cell["index"], "params": cell["params"], "run_id": cell["run_id"],
                           "host": cell["host"], "view": "not started", "last_state": None, "step": None,
                           "loss": None, "usd_so_far": None, "usd_per_hour": None, "pulled": None, "job": None,
                           "error": cell.get("error"), "replaces": (cell.get("history") or [None])[-1]}
    if not cell["run_id"]:
        return row
    rec = app.registry.get(cell["run_id"])
    transport = app.transport_of(rec)
    obs = poll(transport, rec)
    sched = view_for(transport, rec) if obs.view != "unreachable" and job_of(rec) else None
    remember(app.registry, rec, obs)
    st = obs.raw or rec.last_status or {}
    progress, cost = st.get("progress") or {}, st.get("cost") or {}
    row.update(view=obs.view, last_state=st.get("state"), step=progress.get("step"), loss=progress.get("loss"),
               usd_so_far=cost.get("usd_so_far"), usd_per_hour=cost.get("usd_per_hour"), pulled=_pulled(rec),
               error=obs.error if obs.view == "unreachable" else None)
    if sched is not None:
        row["job"] = {"id": sched["job_id"], "state": sched["state"], "reason": sched.get("reason")}
        if obs.view == "no-status" and sched["state"]:
            row["view"] = f"job {sched['state'].lower()}"
    return row


def rows(app: Any, sw: Sweep) -> List[Dict[str, Any]]:
    """Every cell's row, read in parallel (one round trip per cell, several hosts at once)."""
    names = [n for n, _ in sw.grid]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(sw.cells)))) as pool:
        table = list(pool.map(lambda c: _row(app, c), sw.cells))
    for r in table:  # the grid's order, not the file's sorted keys
        r["params"] = {n: r["params"][n] for n in names if n in r["params"]}
    return table


class Pulled(NamedTuple):
    """The newest checkpoint a verified pull brought home for one run."""

    dest: str
    rels: List[str]  # the checkpoint and its sidecar, relative to the run dir (and to dest)
    rel: str
    step: Optional[int]


def newest_pulled(rec: RunRecord) -> Optional[Pulled]:
    """The newest pulled checkpoint of ``rec`` that still safe-loads here, or None."""
    from .ckptload import check as check_ckpt
    from .pull import default_dest
    from .verify import read_manifest

    dest = rec.pull_dest or default_dest(rec.run_id)
    try:
        manifest, _ = read_manifest(dest)
    except (RgtError, OSError):
        return None
    paths = {e.path for e in manifest.entries if os.path.isfile(os.path.join(dest, e.path))}
    ckpts = [e.path for e in manifest.entries if e.kind == "checkpoint" and e.path in paths]

    def step(rel: str) -> int:
        m = STEP_RE.search(os.path.basename(rel))
        return int(m.group(1)) if m else -1

    for rel in sorted(ckpts, key=step, reverse=True):
        c = check_ckpt(os.path.join(dest, rel))
        if c.problem is None and c.how in ("weights_only", "safetensors"):  # a resume needs loadable weights
            sidecar = f"{os.path.dirname(rel)}/.{os.path.basename(rel)}.rgt.json".lstrip("/")
            return Pulled(dest, [rel] + ([sidecar] if sidecar in paths else []), rel, step(rel) if step(rel) >= 0
                          else None)
    return None


def push_hook(pulled: Pulled) -> Callable[[Transport, str], None]:
    """Before the agent starts: rsync the pulled checkpoint into the new run dir, at the same relative path."""

    def push(transport: Transport, run_dir: str) -> None:
        with tempfile.NamedTemporaryFile(prefix="rgt-push-") as lf:
            lf.write(b"".join(r.encode() + b"\0" for r in pulled.rels))
            lf.flush()
            res = transport.rsync(["-a", "--from0", f"--files-from={lf.name}", pulled.dest.rstrip("/") + "/",
                                   transport.rsync_target(run_dir.rstrip("/") + "/")])
        if res.returncode != 0:
            why = res.stderr.decode(errors="replace").strip()[-300:]
            raise RgtError(f"pushing {pulled.rel} to {transport.name} failed: {why}")

    return push


def reassign(app: Any, sw: Sweep, table: List[Dict[str, Any]], hosts: Optional[List[str]], echo: Echo) -> List[str]:
    """Rerun each cell that sits on an unreachable host (and whose results are not home) elsewhere."""
    lost_hosts = {r["host"] for r in table if r["view"] == "unreachable"}
    lost = [r for r in table if r["view"] == "unreachable"
            and not (r["pulled"] and r["last_state"] in TERMINAL)]
    if not lost:
        echo("no cell to reassign: every unreachable cell's results are home, or no host is lost")
        return []
    places = hosts or [h for h in ([sw.slurm] if sw.slurm else sw.hosts) if h not in lost_hosts]
    if not places:
        raise BadInput("no reachable place is left for the lost cells: pass --hosts FILE (or --slurm LOGIN)")
    moved = []
    for k, row in enumerate(lost):
        cell = sw.cells[row["index"] - 1]
        host = places[k % len(places)]
        old = app.registry.get(cell["run_id"])
        pulled = newest_pulled(old)
        new_id = f"{sw.name}-{cell['index']}-r{len(cell['history']) + 1}"
        launch_cell(app, sw, cell, host, new_id, quiet=True, before_start=push_hook(pulled) if pulled else None,
                    resume_rel=pulled.rel if pulled else None)
        old.extra = dict(old.extra or {}, sweep=dict((old.extra or {}).get("sweep") or {}, replaced_by=new_id))
        app.registry.save(old)
        cell["history"].append(cell["run_id"])
        cell.update(run_id=new_id, host=host, error=None)
        sw.save()
        moved.append(new_id)
        how = f"resuming from {pulled.rel} (step {pulled.step})" if pulled else "from the start (nothing was pulled)"
        echo(f"cell {cell['index']} ({params_text(cell['params'])}): {old.run_id} on {row['host']} is unreachable; "
             f"rerun as {new_id} on {host}, {how}")
    return moved
