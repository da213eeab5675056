"""`rgt pull` on the laptop: the box's manifest, rsync by --files-from with resume and bounded retries, verify.

One round: build the manifest on the box (the agent archive's `manifest`), save it in the destination,
invalidate any older PULL_VERIFIED.json, rsync the live entries (--partial-dir keeps what an interrupted
transfer brought, --no-whole-file makes the next run send only the rest, also between two local paths),
then verify. `--follow` repeats rounds until the run ends, so the laptop always holds the newest good
checkpoint; its middle rounds re-hash only files whose stat fingerprint moved, the last one everything.
Everything the box says (manifest, notes, refusals) passes controller.boundary and shared.manifest's
checks first; the agent archive runs behind its hash guard (controller.pyz).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

from rgt.shared.atomic import atomic_write
from rgt.shared.errors import RgtError, TransportError
from rgt.shared.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError
from rgt.shared.paths import ABS_PREFIX

from . import pyz, verify
from .boundary import box_line
from .registry import Registry, RunRecord
from .rsyncrun import Progress, RsyncRun, human, last_line, run_rsync
from .transport.base import Transport

NO_RETRY = {1, 2, 4, 6, 20}  # usage, protocol, unsupported, daemon log; 20: a signal (Ctrl-C, SIGTERM)
VANISHED = {23, 24}  # the box's tree moved under the transfer: build the manifest again
LINK_DOWN = {10, 12, 30, 35, 255}
Echo = Callable[[str], None]


def _env_num(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class PullOptions:
    """How to pull; the environment gives the defaults tests and slow links need."""

    dest: Optional[str] = None
    follow: bool = False
    jobs: Optional[int] = None
    bwlimit_kbps: Optional[int] = field(default_factory=lambda: int(_env_num("RGT_RSYNC_BWLIMIT", 0)) or None)
    io_timeout_s: int = field(default_factory=lambda: int(_env_num("RGT_RSYNC_TIMEOUT_S", 120)))
    attempts: int = field(default_factory=lambda: max(1, int(_env_num("RGT_PULL_ATTEMPTS", 4))))
    backoff_s: float = field(default_factory=lambda: _env_num("RGT_PULL_BACKOFF_S", 2.0))
    interval_s: float = field(default_factory=lambda: _env_num("RGT_FOLLOW_INTERVAL_S", 30.0))
    manifest_timeout_s: float = field(default_factory=lambda: _env_num("RGT_MANIFEST_TIMEOUT_S", 3600.0))


class BoxRefused(RgtError):
    """The box would not build a usable manifest (an empty or unsafe roster): exit 1, nothing to pull."""


class BoxManifest(NamedTuple):
    """What the box said: the manifest, its exact bytes, whether the run has ended, and its notes."""

    manifest: Manifest
    raw: bytes
    final: bool
    notes: list


def default_dest(run_id: str) -> str:
    """./rgt-pulls/<run_id>, absolute."""
    return os.path.abspath(os.path.join("rgt-pulls", run_id))


def agent_argv(transport: Transport, rec: RunRecord) -> list[str]:
    """Argv that runs the agent archive on the box behind its hash guard (sent there when refused)."""
    python = rec.python or transport.find_python(["python3", "python"])[0]
    _local, sha = pyz.local()
    return pyz.guarded_argv(python, pyz.remote_path(rec.root, sha), sha)


def box_manifest(transport: Transport, rec: RunRecord, argv: list[str], timeout_s: float = 3600.0) -> BoxManifest:
    """Build the manifest on the box and read it back; the hash it printed must match the bytes read."""
    for _ in range(3):
        res = transport.run([*argv, "manifest", rec.run_dir], timeout_s=timeout_s)
        if pyz.mismatched(res.rc, res.err):  # missing, truncated or replaced: send it again, then build
            pyz.upload(transport, rec.root)
            res = transport.run([*argv, "manifest", rec.run_dir], timeout_s=timeout_s)
        err = res.err[-65536:].decode(errors="replace").strip().splitlines()
        notes = [box_line(x[6:]) for x in err if x.startswith("note: ")][:20]
        if res.rc != 0:
            why = next((x for x in reversed(err) if not x.startswith("note: ")), f"exit {res.rc}")
            why = box_line(why.removeprefix("rgt agent: "))
            if res.rc == 2:  # the roster itself is refused (empty, unsafe): that does not fix itself
                raise BoxRefused(f"the box refused to build the manifest of {rec.run_id}: {why}")
            raise RgtError(f"the box could not build the manifest of {rec.run_id} this time: {why}")
        words = res.out[:4096].decode(errors="replace").split()
        raw = transport.read_file(f"{rec.run_dir}/manifest.json", max_bytes=MAX_MANIFEST_BYTES + 1)
        if raw is None or len(words) < 3:
            raise RgtError(f"the box built no readable manifest for {rec.run_id}: {res.out[:200]!r}")
        try:
            m = Manifest.from_bytes(raw, f"{rec.host}:{rec.run_dir}/manifest.json")
        except ManifestError as e:
            raise BoxRefused(f"the box's manifest is not usable: {e}") from None
        if m.run_id != rec.run_id:
            raise BoxRefused(f"the box's manifest is for run {box_line(repr(m.run_id), 80)}, not {rec.run_id!r}")
        if m.sha256 == words[0]:
            return BoxManifest(m, raw, words[2] == "final", notes)
    raise RgtError("the box's manifest kept changing while it was read (two builds at once?): try again")


def rsync_argv(transport: Transport, run_dir: str, dest: str, list_file: str, opts: PullOptions,
               force: bool = False) -> list[str]:
    """The pull's rsync command line (data only in argv: paths come through --files-from).

    No -l or -a: a symlink or device the box offers is skipped, never made here. The excludes keep the
    names rgt writes into the pull folder out of rsync's reach even if a sender ignored the list.
    """
    argv = ["rsync", *transport.rsync_args(), "-t", "--no-whole-file", f"--partial-dir={verify.PARTIAL_DIR}",
            f"--timeout={opts.io_timeout_s}", "--from0", f"--files-from={list_file}", "--info=progress2",
            "--stats", "--no-human-readable", f"--exclude=/{verify.VERIFIED_NAME}",
            f"--exclude=/{verify.MANIFEST_NAME}"]
    if opts.bwlimit_kbps:
        argv.append(f"--bwlimit={opts.bwlimit_kbps}")
    if force:
        argv.append("--ignore-times")  # a local file with the box's size and mtime but other bytes
    return [*argv, transport.rsync_target(run_dir.rstrip("/") + "/"), dest.rstrip("/") + "/"]


def clean_strays(dest: str, m: Manifest) -> None:
    """Remove rsync's temp files (``.<name>.XXXXXX``) that a SIGKILLed transfer left beside entries."""
    by_dir: dict[str, set] = {}
    for e in m.entries:
        d, _, base = e.path.rpartition("/")
        by_dir.setdefault(d, set()).add(base)
    for d, names in by_dir.items():
        full = os.path.join(dest, d)
        try:
            present = os.listdir(full)
        except OSError:
            continue
        for name in present:
            m2 = re.fullmatch(r"\.(.+)\.[A-Za-z0-9]{6}", name)
            if m2 and m2.group(1) in names and name not in names and os.path.isfile(os.path.join(full, name)):
                os.unlink(os.path.join(full, name))


def _present_bytes(dest: str, entries: list) -> int:
    """Bytes of entries already here at full size (what rsync's quick check will likely skip)."""
    total = 0
    for e in entries:
        try:
            if os.lstat(os.path.join(dest, e.path)).st_size == e.size_bytes:
                total += e.size_bytes
        except OSError:
            continue
    return total


@dataclass
class RoundResult:
    """What one pull round did."""

    report: verify.Report
    final: bool
    interrupted: bool
    data_bytes: int = 0
    checkpoint_files: int = 0


def pull_round(transport: Transport, rec: RunRecord, dest: str, opts: PullOptions, argv: list[str],
               echo: Echo, full_hash: bool = True) -> RoundResult:
    """Manifest, transfer, verify once. Raises on a transfer that retries could not finish."""
    bm = box_manifest(transport, rec, argv, opts.manifest_timeout_s)
    for n in bm.notes:
        echo(f"box: {n}")
    m = bm.manifest
    if not any(e.kind in ("artifact", "checkpoint") for e in m.entries):
        raise RgtError(f"run {rec.run_id} is still going and has no verified checkpoint yet: nothing to pull "
                       "(try later, or `rgt pull --follow`)")
    os.makedirs(dest, mode=0o700, exist_ok=True)
    trusted = {} if full_hash else verify.trusted_from(dest)
    verify.invalidate(dest)  # the tree is about to change: no stale proof may outlive this line
    atomic_write(os.path.join(dest, verify.MANIFEST_NAME), bm.raw, 0o644)
    live = m.live()
    total = sum(e.size_bytes for e in live)
    echo(f"pull {rec.run_id}: manifest {m.sha256[:12]}, {len(live)} files, {human(total)}"
         + ("" if bm.final else " (the run is still going: checkpoints only)"))
    data, interrupted, send, force = 0, False, live, False
    for attempt in range(1, opts.attempts + 1):
        run = transfer(transport, rec, dest, send, opts, force)
        data += run.data_bytes or 0
        if run.rc == 0:
            clean_strays(dest, m)
            rep = verify.verify_tree(dest, m, opts.jobs, None if interrupted else trusted)
            if rep.resend and not force and attempt < opts.attempts:
                echo(f"{len(rep.resend)} file(s) differ from the box after the transfer: sending them again")
                by_path = {e.path: e for e in m.live()}
                send, force, interrupted = [by_path[p] for p in rep.resend if p in by_path], True, True
                continue
            if rep.ok:
                verify.write_verified(dest, rep)
            return RoundResult(rep, bm.final, interrupted, data, len([e for e in live if e.kind == "checkpoint"]))
        interrupted = True
        if run.rc in NO_RETRY or run.rc < 0 or attempt >= opts.attempts:
            break
        wait_s = min(opts.backoff_s * 2 ** (attempt - 1), 60.0)
        echo(f"rsync stopped (exit {run.rc}: {last_line(run.err)}); retry {attempt}/{opts.attempts - 1} "
             f"in {wait_s:.0f}s")
        time.sleep(wait_s)
        if run.rc in VANISHED:
            bm = box_manifest(transport, rec, argv, opts.manifest_timeout_s)
            m, live = bm.manifest, bm.manifest.live()
            send = live
            atomic_write(os.path.join(dest, verify.MANIFEST_NAME), bm.raw, 0o644)
    if disk_full(run, dest):
        raise RgtError(f"no space left on this machine's disk ({dest}): free some space, then run "
                       f"`rgt pull {rec.run_id}` again; what arrived is kept in {verify.PARTIAL_DIR}/")
    msg = (f"the transfer of {rec.run_id} stopped (rsync exit {run.rc}: {box_line(last_line(run.err))}); what "
           f"arrived is kept in {verify.PARTIAL_DIR}/: run `rgt pull {rec.run_id}` again to resume")
    if run.rc in LINK_DOWN:
        raise TransportError(msg)
    raise RgtError(msg)


def transfer(transport: Transport, rec: RunRecord, dest: str, send: list, opts: PullOptions, force: bool):
    """Rsync ``send`` (manifest entries) into ``dest``, with progress; one RsyncRun for all.

    Entries under ``abs/`` (an absolute checkpoint dir outside the run dir) come from / on the box into
    ``dest/abs/`` in a second rsync with its own --files-from; everything else from the run dir.
    """
    runs = []
    for source, into, group in (
            (rec.run_dir, dest, [e for e in send if not e.path.startswith(ABS_PREFIX)]),
            ("/", os.path.join(dest, ABS_PREFIX), [e for e in send if e.path.startswith(ABS_PREFIX)])):
        if not group and runs:
            continue
        with tempfile.NamedTemporaryFile(prefix="rgt-files-from-") as lf:
            lf.write(b"".join(e.path[len(ABS_PREFIX) if source == "/" else 0:].encode() + b"\0" for e in group))
            lf.flush()
            os.makedirs(into, mode=0o700, exist_ok=True)
            progress = Progress(f"pull {rec.run_id}", sum(e.size_bytes for e in group),
                                already_bytes=0 if force else _present_bytes(dest, group))
            run = run_rsync(rsync_argv(transport, source, into, lf.name, opts, force), progress)
            progress.done(run.rc == 0)
        runs.append(run)
        if run.rc != 0:
            break
    return RsyncRun(runs[-1].rc, sum(r.data_bytes or 0 for r in runs), runs[-1].err)


def disk_full(run, dest: str) -> bool:
    """True when rsync stopped because this machine's disk under ``dest`` is full.

    rsync's own words say so, or it exited 11 (file I/O) on a disk with almost nothing left.
    """
    if "No space left on device" in run.err or "Disk quota exceeded" in run.err:
        return True
    if run.rc != 11:
        return False
    try:
        return shutil.disk_usage(dest).free < (1 << 20)
    except OSError:
        return False


def remember_dest(registry: Registry, rec: RunRecord, dest: str) -> None:
    """Keep the pull's destination in the run's registry entry, when the run is registered."""
    if (registry.dir / f"{rec.run_id}.json").exists() and rec.pull_dest != dest:
        rec.pull_dest = dest
        try:
            registry.save(rec)
        except OSError:
            pass  # a full laptop disk must not undo a verified pull


def checked_line(rep: verify.Report) -> str:
    """How the checkpoints were checked, exactly.

    E.g. "3 loaded with weights_only; 2 checked by hash and zip structure only (...)".
    """
    words = {"weights_only": "loaded with weights_only", "safetensors": "safetensors parsed (header and ranges)",
             "structure": "checked by hash and zip structure only (full unpickling needed, never done here)",
             "hash": "checked by hash only (not loadable without unpickling, never done here)"}
    parts = [f"{len(rep.how[k])} {words[k]}" for k in words if rep.how.get(k)]
    return "; ".join(parts) if parts else "no checkpoint files"


def describe(rep: verify.Report, dest: str) -> str:
    """The one line a verified pull ends with."""
    return (f"verified: {rep.files} files hash-checked, {human(rep.bytes)}; {checked_line(rep)}; "
            f"wrote {os.path.join(dest, verify.VERIFIED_NAME)} "
            f"(run {rep.run_id}, manifest {str(rep.manifest_sha256)[:12]})")


def fail_line(rep: verify.Report) -> str:
    """The error for a failed verification (the problems themselves are printed one per line)."""
    return f"verification failed: {len(rep.problems)} problem(s); nothing was unlocked"


def pull(registry: Registry, transport: Transport, rec: RunRecord, opts: PullOptions, echo: Echo) -> verify.Report:
    """`rgt pull` once; raises RgtError (exit 1) listing problems through ``echo`` when verification fails."""
    dest = os.path.abspath(opts.dest or rec.pull_dest or default_dest(rec.run_id))
    argv = agent_argv(transport, rec)
    res = pull_round(transport, rec, dest, opts, argv, echo, full_hash=True)
    return _finish(registry, rec, dest, res, echo)


def _finish(registry: Registry, rec: RunRecord, dest: str, res: RoundResult, echo: Echo) -> verify.Report:
    if not res.report.ok:
        for p in res.report.problems:
            echo(p)
        raise RgtError(fail_line(res.report))
    remember_dest(registry, rec, dest)
    echo(f"rsync moved {human(res.data_bytes)} ({res.data_bytes} bytes)"
         + ("; the transfer was interrupted or retried, so every file was hashed again" if res.interrupted else ""))
    echo(describe(res.report, dest))
    if res.final:
        echo(f"next: `rgt down {rec.run_id}` checks this pull again before anything is released")
    else:
        echo(f"the run is still going: pull again when it ends (or `rgt pull {rec.run_id} --follow`)")
    return res.report


def follow(registry: Registry, transport: Transport, rec: RunRecord, opts: PullOptions, echo: Echo,
           sleep: Callable[[float], None] = time.sleep) -> verify.Report:
    """Pull round after round until the run ends; a round that fails is reported and the next one tries again."""
    dest = os.path.abspath(opts.dest or rec.pull_dest or default_dest(rec.run_id))
    argv = agent_argv(transport, rec)
    misses = 0
    while True:
        try:
            bm = box_manifest(transport, rec, argv, opts.manifest_timeout_s)
            rec_v = _current(dest, bm.manifest.sha256)
            if rec_v and not bm.final:
                res = None
            else:
                res = pull_round(transport, rec, dest, opts, argv, echo, full_hash=bm.final)
            misses = 0
        except TransportError as e:
            misses += 1
            echo(f"box unreachable ({e}); the run may still be going; trying again")
            res = None
        except BoxRefused:
            raise  # an empty or unsafe roster does not fix itself
        except (RgtError, OSError) as e:
            echo(f"this round did not finish: {e}")
            res = None
        if res is not None:
            if res.final:
                return _finish(registry, rec, dest, res, echo)
            if res.report.ok:
                remember_dest(registry, rec, dest)
                echo(describe(res.report, dest) + f"; the box has {res.checkpoint_files} live checkpoint file(s)")
            else:
                for p in res.report.problems:
                    echo(p)
        sleep(min(opts.interval_s * (2 ** min(misses, 4)), 600.0))


def _current(dest: str, sha: str) -> bool:
    """True when ``dest`` already holds a verified pull of this exact manifest, untouched since."""
    try:
        rec = verify.read_verified(dest)
    except RgtError:
        return False
    if rec is None or rec.get("manifest_sha256") != sha:
        return False
    now = {rel: verify.fp_of(st) for rel, st in verify.scan_tree(dest).items()}
    return now == verify.recorded_fingerprint(rec)
