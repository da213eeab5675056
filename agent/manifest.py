"""`pyz manifest RUN_DIR` on the box: builds manifest.json from the run's explicit roster (design section 9).

The roster has two shapes, chosen by whether the run has ended (a DONE, FAILED or STOPPED marker exists):

- final: the spec's artifact globs under code/ (directories expanded), the checkpoints of ckpt_index.json
  plus any other checkpoint-glob match in the checkpoint dir, their sidecars, the trainer's logs,
  spec.json, exit.json, helper/progress.json and the marker. No artifact and no checkpoint: refused.
- partial (the run still goes; what `rgt pull --follow` takes): the checkpoints the agent verified, their
  sidecars and spec.json. Logs, progress and artifacts still change, so listing them would make a
  manifest that never matches twice.

Once a path was published in manifest.json it stays there: live while the roster lists it, else
`pruned` with its last hash, so a laptop that pulled it earlier stays valid. A rebuild with the same
entries keeps the file as it is, so the manifest hash only moves when the box's content moves.
"""

from __future__ import annotations

import glob
import os
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

from rgt.shared.atomic import atomic_write, dumps_json, read_json
from rgt.shared.errors import RgtError
from rgt.shared.manifest import Entry, Manifest, ManifestError, check_rel_path, sha256_file
from rgt.shared.paths import ABS_PREFIX, MARKERS, RunPaths, box_path, origin_path
from rgt.shared.spec import RunSpec

INDEX_NAME = "ckpt_index.json"
CACHE_NAME = ".manifest-cache.json"
# Index states whose checkpoint a pull brings home; the laptop proves each by loading it.
PARTIAL_STATES = ("verified", "unverified_pickle", "unverifiable")
BAD_STATES = ("corrupt", "nonfinite")
# A cached hash is trusted only for a file that had been still this long when it was hashed, so a
# rewrite inside one mtime tick can never hide behind an equal (size, mtime).
RACY_NS = 2 * 10**9
Roster = Dict[str, str]  # relpath -> kind


class RosterMoved(RgtError):
    """A file changed or vanished while it was hashed (exit 1): building again later will work."""


def note(message: str) -> None:
    """A line for the person on the laptop (the controller shows this command's stderr)."""
    sys.stderr.write(f"note: {message}\n")


def _rel(paths: RunPaths, full: str) -> str:
    return origin_path(paths.root, full)


def _inside(paths: RunPaths, rel: str, what: str) -> str:
    """``rel`` if it is safe and no symlink sits anywhere on its way from the run dir (or from / for ``abs/``)."""
    if os.path.isabs(rel):  # an index written before abs/ paths existed
        rel = _rel(paths, rel)
    if rel.startswith("../") or rel == "..":
        raise ManifestError(f"{what} {rel!r} lies outside the run dir {paths.root}: rgt pulls only what is inside")
    check_rel_path(rel)
    if rel.startswith(ABS_PREFIX):
        full = box_path(paths.root, rel)
        if os.path.realpath(full) != full:
            raise ManifestError(f"{full!r} is or goes through a symlink: refusing it (remove the link on the box)")
        return rel
    real_root = os.path.realpath(paths.root)
    if os.path.realpath(os.path.join(paths.root, rel)) != os.path.join(real_root, *rel.split("/")):
        raise ManifestError(f"{rel!r} is or goes through a symlink: refusing it (remove the link on the box)")
    return rel


def _walk_files(top: str) -> List[str]:
    """Every file under ``top``; a symlink inside is returned too, so the roster refuses it by name."""
    out = []
    for root, dirs, names in os.walk(top):
        dirs.sort()
        out.extend(os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d)))
        out.extend(os.path.join(root, n) for n in sorted(names))
    return out


def artifact_base(paths: RunPaths, spec: RunSpec, pattern: str) -> str:
    """The absolute glob of one artifact pattern.

    Relative ones lie under code/, ``$RGT_CKPT_DIR/...`` in the checkpoint dir, and absolute ones only
    inside a dir where checkpoints are looked for.
    """
    from .ckpt.roots import build_roots

    roots = build_roots(spec, paths)
    for var in ("$RGT_CKPT_DIR", "${RGT_CKPT_DIR}"):
        if pattern == var or pattern.startswith(var + "/"):
            pattern = roots[0].path + pattern[len(var):]
    parts = pattern.replace("\\", "/").split("/")
    if ".." in parts:
        raise ManifestError(f"artifact glob {pattern!r} must stay inside the run's code/ dir (no '..')")
    if not os.path.isabs(pattern):
        return os.path.join(paths.code, pattern)
    dirs = [r.path for r in roots]  # never the run dir itself: secrets.env lives there
    if not any(pattern.startswith(os.path.join(d, "")) for d in dirs):
        raise ManifestError(f"artifact glob {pattern!r} must stay inside the run's code/ dir or a checkpoint "
                            f"dir ({', '.join(dirs)})")
    return pattern


def artifacts(paths: RunPaths, spec: RunSpec) -> Roster:
    """The spec's artifact globs (see ``artifact_base``); a matched directory brings all its files."""
    items: Roster = {}
    for pattern in spec.artifacts:
        for full in sorted(glob.glob(artifact_base(paths, spec, pattern), recursive=True)):
            found = _walk_files(full) if os.path.isdir(full) and not os.path.islink(full) else [full]
            for f in found:
                items[_inside(paths, _rel(paths, f), "artifact")] = "artifact"
    return items


def _index_records(paths: RunPaths) -> List[dict]:
    try:
        doc = read_json(os.path.join(paths.root, INDEX_NAME))
    except (OSError, ValueError):
        return []
    records = doc.get("records") if isinstance(doc, dict) else doc
    return [r for r in records or [] if isinstance(r, dict) and isinstance(r.get("path"), str)]


def checkpoints(paths: RunPaths, spec: RunSpec, final: bool) -> Tuple[Roster, Dict[str, Entry], Dict[str, tuple]]:
    """(live roster, pruned entries, known hashes) from ckpt_index.json, plus unindexed files when final."""
    live: Roster = {}
    pruned: Dict[str, Entry] = {}
    known: Dict[str, tuple] = {}
    indexed = set()
    for rec in _index_records(paths):
        rel, state = rec["path"].rstrip("/"), str(rec.get("state"))
        indexed.add(_rel(paths, rel) if os.path.isabs(rel) else rel)
        if rec.get("quarantined") or state in BAD_STATES:
            if final:
                note(f"checkpoint {rel} is not in the manifest: it is {state} ({rec.get('detail') or 'see the index'})")
            continue
        if state not in PARTIAL_STATES and not final:
            continue  # still being checked: the next manifest takes it
        rel = _inside(paths, rel, "checkpoint")
        files = [(rel, rec.get("size_bytes"), rec.get("sha256"), rec.get("mtime_ns"), rec.get("ino"))]
        if rec.get("is_dir"):
            top = box_path(paths.root, rel)
            if os.path.isdir(top) and not os.path.islink(top):  # what is there now, not what was listed
                files = [(_rel(paths, f), None, None, None, None) for f in _walk_files(top)]
            else:
                # The index lists a directory's files by run-relative "path" (older records: "rel").
                files = [(f["path"] if isinstance(f.get("path"), str) else f"{rel}/{f['rel']}", f.get("size_bytes"),
                          f.get("sha256"), None, None)
                         for f in rec.get("files") or []
                         if isinstance(f, dict) and isinstance(f.get("path") or f.get("rel"), str)]
        if rec.get("sidecar"):
            files.append((_sidecar(rel, rec["sidecar"]), None, None, None, None))
        for path, size, sha, mtime_ns, ino in files:
            on_box = os.path.lexists(box_path(paths.root, path))
            kind = "metrics" if path.endswith(".rgt.json") else "checkpoint"
            if on_box:  # a pruned flag whose file is still there: the removal failed, so pull it
                live[_inside(paths, path, "checkpoint")] = kind
                if isinstance(size, int) and isinstance(sha, str) and mtime_ns is not None:
                    known[path] = (size, mtime_ns, ino, sha)
            elif isinstance(size, int) and isinstance(sha, str):
                pruned[path] = Entry(path, size, sha, kind, True)
    if final:
        for rel, kind in _unindexed(paths, spec, indexed).items():
            live.setdefault(rel, kind)
    return live, pruned, known


def _sidecar(rel: str, name: str) -> str:
    head = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
    return head + os.path.basename(name)


def _unindexed(paths: RunPaths, spec: RunSpec, indexed: set) -> Roster:
    """Checkpoints the pipeline never indexed (no pipeline, or the agent died first), found as it finds them.

    In the working dir only what is not in the baseline taken before the first launch (none taken: none).
    """
    from .ckpt.roots import build_roots, load_baseline, uploaded
    from .ckpt.scan import Matcher, list_candidates

    matcher = Matcher(spec.ckpt_globs)
    baseline = load_baseline(paths)
    out: Roster = {}
    for root in build_roots(spec, paths):
        if root.kind == "code" and baseline is None:
            continue
        for key, (full, is_dir) in (list_candidates(root.path, matcher, skip=root.skip) or {}).items():
            if _rel(paths, full) in indexed or (root.kind == "code" and uploaded(root.prefix + key, full,
                                                                                   baseline or {})):
                continue
            for f in _walk_files(full) if is_dir else [full]:
                out[_inside(paths, _rel(paths, f), "checkpoint")] = "checkpoint"
    return out


def roster(paths: RunPaths, spec: RunSpec, final: bool) -> Tuple[Roster, Dict[str, Entry], Dict[str, tuple]]:
    """(relpath -> kind, pruned entries, known hashes) of everything this pull must bring home."""
    items: Roster = {"spec.json": "metrics"}
    live, pruned, known = checkpoints(paths, spec, final)
    if final:
        items.update(artifacts(paths, spec))
        for full in sorted(glob.glob(os.path.join(paths.logs, "trainer.log*"))):
            if not full.endswith(".tmp"):
                items[_rel(paths, full)] = "log"
        for rel in ("exit.json", "helper/progress.json"):
            if os.path.isfile(os.path.join(paths.root, rel)):
                items[rel] = "metrics"
        for name in MARKERS:
            if os.path.lexists(paths.marker(name)):
                items[name] = "marker"
    items.update(live)  # a checkpoint also matched by an artifact glob is a checkpoint
    return items, pruned, known


def _hash_one(root: str, rel: str, known: Optional[tuple], now_ns: int) -> Tuple[int, str, Optional[list]]:
    """(size, sha256, cache row or None) of one file, refusing symlinks and files that change under us."""
    full = box_path(root, rel)
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        raise RosterMoved(f"{rel!r} vanished while the manifest was built; build it again") from None
    except PermissionError:
        raise ManifestError(f"{full} cannot be read by this login (permission denied): rgt cannot pull it; "
                            "fix its permissions on the box (nothing was changed)") from None
    if stat.S_ISLNK(st.st_mode):
        raise ManifestError(f"{rel!r} is a symlink: refusing it (remove the link on the box)")
    if not stat.S_ISREG(st.st_mode):
        raise ManifestError(f"{rel!r} is not a regular file")
    key = (st.st_size, st.st_mtime_ns, st.st_ino)
    if known is not None and tuple(known[:2]) == key[:2] and known[2] in (None, st.st_ino):
        return st.st_size, known[3], None
    try:
        digest = sha256_file(full)
    except PermissionError:
        raise ManifestError(f"{full} cannot be read by this login (permission denied): rgt cannot pull it; "
                            "fix its permissions on the box (nothing was changed)") from None
    after = os.lstat(full)
    if (after.st_size, after.st_mtime_ns, after.st_ino) != key:
        raise RosterMoved(f"{rel!r} changed while it was hashed; build the manifest again")
    row = [*key, digest] if now_ns - st.st_mtime_ns > RACY_NS else None
    return st.st_size, digest, row


def _load_cache(paths: RunPaths) -> Dict[str, tuple]:
    try:
        doc = read_json(os.path.join(paths.root, CACHE_NAME))
        return {k: tuple(v) for k, v in doc.get("files", {}).items() if isinstance(v, list) and len(v) == 4}
    except (OSError, ValueError, AttributeError):
        return {}


def _previous(paths: RunPaths) -> Optional[Manifest]:
    try:
        with open(paths.manifest, "rb") as f:
            return Manifest.from_bytes(f.read(), paths.manifest)
    except (OSError, ManifestError):
        return None


def build(paths: RunPaths) -> Tuple[Manifest, bool]:
    """Build (or keep) manifest.json; returns (manifest, final). ManifestError for an unsafe or empty roster."""
    spec = RunSpec.load(paths.spec)
    final = paths.existing_marker() is not None
    items, pruned, known = roster(paths, spec, final)
    if final and not any(k == "checkpoint" for k in items.values()) and not pruned and \
            not any(k == "artifact" for k in items.values()):
        raise ManifestError(
            f"nothing to pull: no file matched the artifact globs {spec.artifacts or '(none given)'} and no "
            f"checkpoint is in {spec.ckpt_dir}/ or among the new files of code/; refusing an empty manifest "
            "(if the run truly made nothing worth keeping, release the box at the provider yourself)")
    cache = _load_cache(paths)
    now_ns = time.time_ns()
    rels = sorted(items)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda r: _hash_one(paths.root, r, known.get(r) or cache.get(r), now_ns), rels))
    entries = [Entry(rel, size, sha, items[rel]) for rel, (size, sha, _row) in zip(rels, results)]
    seen = set(rels)
    for rel, e in pruned.items():
        if rel not in seen:
            entries.append(e)
            seen.add(rel)
    prev = _previous(paths)
    if prev is not None and prev.run_id == spec.run_id:
        for e in prev.entries:
            if e.path not in seen:  # published once: stays, as pruned, with its last hash
                entries.append(Entry(e.path, e.size_bytes, e.sha256, e.kind, True))
                seen.add(e.path)
    manifest = Manifest(run_id=spec.run_id, entries=entries, created_at=time.time()).validate()
    rows = {rel: row for rel, (_s, _h, row) in zip(rels, results) if row is not None}
    rows.update({rel: list(cache[rel]) for rel in rels if rel not in rows and rel in cache})
    try:
        atomic_write(os.path.join(paths.root, CACHE_NAME), dumps_json({"files": rows}), 0o600)
    except OSError as e:
        note(f"hash cache not written ({e}); the next manifest hashes everything again")
    if prev is not None and _same(prev, manifest):
        return prev, final
    atomic_write(paths.manifest, manifest.to_json())
    return manifest, final


def _same(a: Manifest, b: Manifest) -> bool:
    da, db = a.to_dict(), b.to_dict()
    da.pop("created_at", None)
    db.pop("created_at", None)
    return da == db


def main(paths: RunPaths) -> int:
    """Print ``<manifest sha256> <entries> <final|partial>``."""
    m, final = build(paths)
    sys.stdout.write(f"{m.sha256} {len(m.entries)} {'final' if final else 'partial'}\n")
    return 0
