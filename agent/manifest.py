"""`pyz manifest RUN_DIR` on the box: builds manifest.json from the run's explicit roster (design section 9)."""

from __future__ import annotations

import glob
import os
import sys
from typing import Dict, List, Tuple

from rgt.shared.atomic import atomic_write, read_json
from rgt.shared.manifest import Entry, Manifest, ManifestError, build_manifest
from rgt.shared.paths import MARKERS, RunPaths
from rgt.shared.spec import RunSpec


def _rel(paths: RunPaths, full: str) -> str:
    return os.path.relpath(full, paths.root).replace(os.sep, "/")


def roster(paths: RunPaths, spec: RunSpec) -> Tuple[List[Tuple[str, str]], Dict[str, Entry]]:
    """(relpath, kind) of everything a pull must bring home, and the pruned checkpoints."""
    items: Dict[str, str] = {}
    for pattern in spec.artifacts:
        for full in glob.glob(os.path.join(paths.code, pattern), recursive=True):
            if os.path.isfile(full) or os.path.islink(full):
                items[_rel(paths, full)] = "artifact"
    pruned: Dict[str, Entry] = {}
    try:
        index = read_json(os.path.join(paths.root, "ckpt_index.json"))
    except (OSError, ValueError):
        index = {}
    for rec in (index.get("records") or []) if isinstance(index, dict) else []:
        if rec.get("state") not in ("verified", "unverified_pickle") or not rec.get("path"):
            continue
        if rec.get("pruned"):
            pruned[rec["path"]] = Entry(rec["path"], rec["size_bytes"], rec["sha256"], "checkpoint", True)
        else:
            items[rec["path"]] = "checkpoint"
    for full in sorted(glob.glob(os.path.join(paths.logs, "trainer.log*"))):
        items[_rel(paths, full)] = "log"
    for name in ("progress.json",):
        full = os.path.join(paths.root, "helper", name)
        if os.path.isfile(full):
            items[_rel(paths, full)] = "metrics"
    for name in MARKERS:
        if os.path.isfile(paths.marker(name)):
            items[name] = "marker"
    for name in ("exit.json", "spec.json"):
        if os.path.isfile(os.path.join(paths.root, name)):
            items[name] = "metrics"
    return sorted(items.items()), pruned


def build(paths: RunPaths) -> Manifest:
    """Build and atomically write manifest.json; ManifestError for an empty or unsafe roster."""
    spec = RunSpec.load(paths.spec)
    items, pruned = roster(paths, spec)
    if not any(kind in ("artifact", "checkpoint") for _, kind in items) and not pruned:
        raise ManifestError(
            "no artifacts and no verified checkpoints: refusing an empty manifest (check --artifacts globs)")
    manifest = build_manifest(paths.root, spec.run_id, items, pruned)
    atomic_write(paths.manifest, manifest.to_json())
    return manifest


def main(paths: RunPaths) -> int:
    """Print the manifest's hash and entry count."""
    m = build(paths)
    sys.stdout.write(f"{m.sha256} {len(m.entries)}\n")
    return 0
