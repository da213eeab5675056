"""Proving a pulled tree on the laptop: exact roster, sizes, sha256, safe-loading checkpoints, PULL_VERIFIED.json.

Verified means: every live manifest entry is here with the box's size and sha256; a pruned entry is absent
or the same; nothing else is here (apart from manifest.json, PULL_VERIFIED.json and rsync's partial dir);
and every checkpoint passes controller.ckptload (torch's weights-only loader, all floating tensors finite;
a file that would need full unpickling is covered by its hash and zip structure only, and is counted as
such: nothing is ever unpickled here). Success writes PULL_VERIFIED.json, bound to the run id and the
manifest hash, with a stat fingerprint of every file so that any later change to the tree is seen without
reading it all again. The record is sealed with an HMAC whose key lives only in this machine's rgt state
dir (0600): a record the box planted in the pull folder never passes, and is removed when read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from rgt.shared.atomic import atomic_write_json, fsync_dir, read_json
from rgt.shared.errors import GateRefused
from rgt.shared.manifest import Entry, Manifest, ManifestError, canonical_json, sha256_file

from .ckptload import check as check_checkpoint
from .state import state_dir

MANIFEST_NAME = "manifest.json"
VERIFIED_NAME = "PULL_VERIFIED.json"
PARTIAL_DIR = ".rgt-partial"
VERIFIED_SCHEMA = "rgt/pull-verified/v2"  # v2: sealed with the laptop's key; no allow_pickle
KEY_NAME = "pull-key"
MAX_RECORD_BYTES = 128 << 20
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
WEIGHT_SUFFIXES = TORCH_SUFFIXES + (".safetensors",)
Fp = tuple  # (size, mtime_ns, ino, ctime_ns): ctime moves on any write or rename, and nobody can set it


@dataclass
class Report:
    """What one verification found."""

    run_id: Optional[str]
    manifest_sha256: Optional[str]
    problems: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    hashed: int = 0
    checkpoints: int = 0
    how: dict[str, list[str]] = field(default_factory=dict)  # ckptload's HOWS -> checkpoint paths checked so
    resend: list[str] = field(default_factory=list)  # live entries a new transfer could fix
    fingerprint: dict[str, Fp] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


def fp_of(st: os.stat_result) -> Fp:
    """The stat fingerprint of one file."""
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def scan_tree(dest: str) -> dict[str, os.stat_result]:
    """The lstat of everything that is not a directory under ``dest``, by POSIX relative path."""
    out = {}
    for root, dirs, names in os.walk(dest):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, dest).replace(os.sep, "/")
            if rel == VERIFIED_NAME or (root == dest and name.startswith(f".{VERIFIED_NAME}.")):
                continue  # the record itself, and its atomic-write temp file
            try:
                out[rel] = os.lstat(full)
            except FileNotFoundError:
                continue
    return out


def _ignored(rel: str) -> bool:
    """Files that are here by design, not by the manifest."""
    return rel == MANIFEST_NAME or PARTIAL_DIR in rel.split("/")


def read_manifest(dest: str) -> tuple[Manifest, str]:
    """The pulled manifest and its hash; ManifestError names what is wrong."""
    path = os.path.join(dest, MANIFEST_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ManifestError(f"{path} is missing: this is not a pulled run (run `rgt pull` first)") from None
    m = Manifest.from_bytes(raw, path)
    return m, m.sha256


def hash_files(dest: str, rels: list[str], sizes: dict[str, int], jobs: Optional[int] = None,
               progress: Optional[Callable[[int], None]] = None) -> dict[str, str]:
    """sha256 of each file, largest first across ``jobs`` threads (hashlib drops the GIL on big buffers)."""
    order = sorted(rels, key=lambda r: -sizes.get(r, 0))
    workers = max(1, min(jobs or os.cpu_count() or 1, len(order) or 1))

    def one(rel: str) -> tuple[str, str]:
        try:
            digest = sha256_file(os.path.join(dest, rel))
        except OSError as e:
            digest = f"unreadable: {e.strerror or e}"
        if progress is not None:
            progress(sizes.get(rel, 0))
        return rel, digest

    if workers == 1:
        return dict(map(one, order))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, order))


def _check_entry(e: Entry, st: Optional[os.stat_result]) -> Optional[str]:
    if st is None:
        return None if e.pruned else "missing (the box has it)"
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink here, not the file the box has"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size != e.size_bytes:
        how = "truncated" if st.st_size < e.size_bytes else "too long"
        return f"{st.st_size} bytes here, {e.size_bytes} on the box ({how})"
    return None


def is_checkpoint(e: Entry) -> bool:
    """Entries that must load: checkpoint weight files, and any artifact with a checkpoint suffix."""
    return e.path.endswith(WEIGHT_SUFFIXES) if e.kind == "checkpoint" else e.path.endswith(
        (".pt", ".pth", ".ckpt", ".safetensors"))


def verify_tree(dest: str, manifest: Optional[Manifest] = None,
                jobs: Optional[int] = None, trusted: Optional[dict[str, tuple[Fp, str]]] = None,
                progress: Optional[Callable[[int], None]] = None) -> Report:
    """Check ``dest`` against its manifest. ``trusted`` maps a path to (fingerprint, sha256) proven earlier."""
    try:
        m, sha = (manifest, manifest.sha256) if manifest is not None else read_manifest(dest)
    except ManifestError as e:
        return Report(None, None, [f"{MANIFEST_NAME}: {e}"])
    rep = Report(m.run_id, sha)
    tree = scan_tree(dest)
    rep.fingerprint = {rel: fp_of(st) for rel, st in tree.items()}
    by_path = {e.path: e for e in m.entries}
    if not any(e.kind in ("artifact", "checkpoint") for e in m.entries):
        rep.problems.append(f"{MANIFEST_NAME}: lists no artifact and no checkpoint: a pull that proves nothing "
                            "is a failure")
    to_hash: list[str] = []
    for e in m.entries:
        st = tree.get(e.path)
        problem = _check_entry(e, st)
        if problem:
            rep.problems.append(f"{e.path}: {problem}")
            if not e.pruned:
                rep.resend.append(e.path)
        elif st is not None:
            rep.files += 1
            rep.bytes += st.st_size
            known = (trusted or {}).get(e.path)
            if known is None or known[0] != fp_of(st) or known[1] != e.sha256:
                to_hash.append(e.path)
    for rel in sorted(tree):
        if rel not in by_path and not _ignored(rel):
            rep.problems.append(f"{rel}: extra file the manifest does not list (stale from an earlier pull? "
                                "remove it, or pull into a fresh --dest)")
    digests = hash_files(dest, to_hash, {r: tree[r].st_size for r in to_hash}, jobs, progress)
    rep.hashed = len(digests)
    loads = []
    for rel, digest in sorted(digests.items()):
        want = by_path[rel].sha256
        if digest != want:
            rep.problems.append(f"{rel}: sha256 {digest[:12]} here, {want[:12]} on the box (changed or corrupt)")
            if not by_path[rel].pruned:
                rep.resend.append(rel)
        elif is_checkpoint(by_path[rel]):
            loads.append(rel)
    for rel in loads:
        c = check_checkpoint(os.path.join(dest, rel))
        rep.checkpoints += 1
        rep.how.setdefault(c.how, []).append(rel)
        if c.problem:
            rep.problems.append(f"{rel}: {c.problem}")
    return rep


def _key() -> bytes:
    """The laptop's sealing key: 32 random bytes in the state dir, made on first use, readable only by us."""
    path = os.path.join(str(state_dir()), KEY_NAME)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)
    with open(path, "rb") as f:
        key = f.read()
    if len(key) < 32:
        raise GateRefused(f"{path} is not rgt's 32-byte key: remove it and run `rgt verify DIR` again")
    return key


def _seal(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "mac"}
    return hmac.new(_key(), canonical_json(body), hashlib.sha256).hexdigest()


def write_verified(dest: str, rep: Report) -> str:
    """Atomically write the sealed PULL_VERIFIED.json for a clean report; returns its path."""
    if not rep.ok:
        raise ValueError("refusing to record a failed verification")
    path = os.path.join(dest, VERIFIED_NAME)
    doc: dict[str, Any] = {
        "schema": VERIFIED_SCHEMA, "run_id": rep.run_id, "manifest_sha256": rep.manifest_sha256,
        "verified_at": time.time(), "files": rep.files, "bytes": rep.bytes, "checkpoints": rep.checkpoints,
        "checked": {how: len(rels) for how, rels in sorted(rep.how.items())},
        "fingerprint": [[rel, *fp] for rel, fp in sorted(rep.fingerprint.items())],
    }
    doc["mac"] = _seal(doc)
    atomic_write_json(path, doc, 0o600)
    return path


def invalidate(dest: str) -> None:
    """Remove PULL_VERIFIED.json: the tree is about to change, or no longer proves anything."""
    path = os.path.join(dest, VERIFIED_NAME)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except IsADirectoryError:  # not rgt's: nothing but a sealed file may hold this name
        shutil.rmtree(path)
    fsync_dir(dest)


def read_verified(dest: str) -> Optional[dict[str, Any]]:
    """The sealed PULL_VERIFIED.json record, None when absent; GateRefused (and the file removed) otherwise."""
    path = os.path.join(dest, VERIFIED_NAME)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    rec: Any = None
    if stat.S_ISREG(st.st_mode) and st.st_size <= MAX_RECORD_BYTES:
        try:
            rec = read_json(path)
        except (OSError, ValueError, RecursionError):
            rec = None
    mac = rec.get("mac") if isinstance(rec, dict) else None
    if not isinstance(mac, str) or rec.get("schema") != VERIFIED_SCHEMA or \
            not isinstance(rec.get("fingerprint"), list) or not hmac.compare_digest(mac, _seal(rec)):
        invalidate(dest)
        raise GateRefused(f"{path} is not a verification record this machine wrote (its seal does not match): "
                          f"removed; verify again with `rgt verify {dest}` or `rgt pull`")
    return rec


def recorded_fingerprint(rec: dict[str, Any]) -> dict[str, Fp]:
    """The record's fingerprint as a dict."""
    return {row[0]: tuple(row[1:]) for row in rec["fingerprint"]
            if isinstance(row, list) and len(row) == 5 and isinstance(row[0], str)}


def trusted_from(dest: str) -> dict[str, tuple[Fp, str]]:
    """(fingerprint, sha256) of files an existing, matching PULL_VERIFIED.json proved, for incremental rounds."""
    try:
        rec = read_verified(dest)
        m, sha = read_manifest(dest)
    except (GateRefused, ManifestError):
        return {}
    if rec is None or rec.get("manifest_sha256") != sha:
        return {}
    fps = recorded_fingerprint(rec)
    return {e.path: (fps[e.path], e.sha256) for e in m.entries if e.path in fps}


def check_verified(dest: str, run_id: str, manifest_sha: str, jobs: Optional[int] = None) -> dict[str, Any]:
    """The gate's local half: a record for this run and manifest, and a tree that still matches it."""
    rec = read_verified(dest)
    if rec is None:
        raise GateRefused(f"no verified pull of run {run_id} in {dest} (no {VERIFIED_NAME}): "
                          f"run `rgt pull {run_id}` first")
    if rec.get("run_id") != run_id:
        raise GateRefused(f"{dest} holds a verified pull of run {rec.get('run_id')!r}, not {run_id!r}")
    if rec.get("manifest_sha256") != manifest_sha:
        raise GateRefused(
            f"the box's manifest changed since your pull (pulled {str(rec.get('manifest_sha256'))[:12]}, box now "
            f"{manifest_sha[:12]}: a new checkpoint or artifact): run `rgt pull {run_id}` again")
    now = {rel: fp_of(st) for rel, st in scan_tree(dest).items()}
    if now == recorded_fingerprint(rec):
        return rec
    rep = verify_tree(dest, jobs=jobs)  # never unpickles, whatever any file in the folder says
    if rep.manifest_sha256 != manifest_sha and rep.ok:
        rep.problems.append(f"{MANIFEST_NAME}: it no longer is the manifest that was verified")
    if not rep.ok:
        invalidate(dest)
        more = len(rep.problems) - 10
        shown = "; ".join(rep.problems[:10]) + (f"; and {more} more" if more > 0 else "")
        raise GateRefused(f"the pulled tree in {dest} changed since it was verified and no longer matches: {shown}")
    write_verified(dest, rep)
    return read_verified(dest) or rec


def manifest_sha_of(raw: bytes) -> str:
    """The hash of manifest bytes as the box wrote them (canonical JSON)."""
    return hashlib.sha256(raw).hexdigest()
