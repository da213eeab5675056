"""The artifact manifest (design section 9): built on the box from a roster, verified on the laptop."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .errors import BadInput

SCHEMA = "rgt/manifest/v1"
KINDS = ("checkpoint", "artifact", "log", "metrics", "marker")
HASH_CHUNK_BYTES = 4 * 1024 * 1024
MAX_ENTRIES = 200_000  # far above any real run; a million-entry manifest is refused before it is checked
MAX_MANIFEST_BYTES = 64 << 20
MAX_SIZE_BYTES = 1 << 60  # an exabyte: a bigger size is a lie
MAX_PATH_BYTES = 4096
# What rgt itself writes into a pull folder: a box manifest that names one of these could plant it there.
RESERVED_TOP = ("manifest.json", "pull_verified.json")
RESERVED_PARTS = (".rgt-partial",)
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029"


class ManifestError(BadInput):
    """The manifest or its roster is unsafe or inconsistent."""


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes the manifest hash is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_file(path: str, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """Streamed sha256 of a file."""
    h = hashlib.sha256()
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def check_rel_path(path: str) -> str:
    """Return ``path`` if it is a safe relative POSIX path, else raise ManifestError naming it."""
    if not isinstance(path, str) or not path:
        raise ManifestError(f"manifest entry has an empty or non-text path: {path!r}")
    if path.startswith("/") or path.startswith("\\") or "\\" in path:
        raise ManifestError(f"manifest entry {path!r} is absolute or has a backslash")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ManifestError(f"manifest entry {path[:80]!r}... is longer than {MAX_PATH_BYTES} bytes")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in path):
        raise ManifestError(f"manifest entry {ascii(path)} has a control character")
    if any(c in BIDI for c in path):
        raise ManifestError(f"manifest entry {ascii(path)} has a bidi override (it would display as another name)")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ManifestError(f"manifest entry {path!r} has an empty, '.' or '..' component")
    if any(p.startswith("-") for p in parts):
        raise ManifestError(f"manifest entry {path!r} has a component starting with '-' (read as an option)")
    # casefold: a case-insensitive laptop disk (macOS) would write PULL_verified.json over the record
    if parts[0].casefold() in RESERVED_TOP or parts[0].casefold().startswith(".pull_verified.json") or any(
            p.casefold() in RESERVED_PARTS for p in parts):
        raise ManifestError(f"manifest entry {path!r} is a name rgt reserves for its own files in the pull folder")
    return path


@dataclass(frozen=True)
class Entry:
    """One file: where, how big, its hash, what it is, and whether retention pruned it on the box."""

    path: str
    size_bytes: int
    sha256: str
    kind: str
    pruned: bool = False


@dataclass
class Manifest:
    """The roster-built list of everything a pull must bring home."""

    run_id: str
    entries: List[Entry] = field(default_factory=list)
    created_at: float = 0.0
    schema: str = SCHEMA

    def validate(self) -> Manifest:
        """Refuse an empty roster, duplicates, unsafe paths, unknown kinds and bad hashes."""
        if self.schema != SCHEMA:
            raise ManifestError(f"manifest schema {self.schema!r} is not {SCHEMA!r}")
        if not isinstance(self.run_id, str) or not isinstance(self.created_at, (int, float)):
            raise ManifestError("manifest run_id or created_at has the wrong type")
        if not self.entries:
            raise ManifestError("the manifest is empty: refusing a pull that would prove nothing")
        if len(self.entries) > MAX_ENTRIES:
            raise ManifestError(f"the manifest lists {len(self.entries)} files, more than the {MAX_ENTRIES} "
                                "rgt accepts: narrow the artifact globs")
        seen = set()
        for e in self.entries:
            check_rel_path(e.path)
            if e.path in seen:
                raise ManifestError(f"manifest entry {e.path!r} appears twice")
            seen.add(e.path)
            if not isinstance(e.kind, str) or e.kind not in KINDS:
                raise ManifestError(f"manifest entry {e.path!r} has unknown kind {ascii(e.kind)[:40]}")
            if not isinstance(e.sha256, str) or len(e.sha256) != 64 or any(
                    c not in "0123456789abcdef" for c in e.sha256):
                raise ManifestError(f"manifest entry {e.path!r} has a malformed sha256")
            if not isinstance(e.size_bytes, int) or isinstance(e.size_bytes, bool) or not (
                    0 <= e.size_bytes <= MAX_SIZE_BYTES):
                raise ManifestError(f"manifest entry {e.path!r} has a bad size ({ascii(e.size_bytes)[:40]})")
            if not isinstance(e.pruned, bool):
                raise ManifestError(f"manifest entry {e.path!r} has a pruned flag that is not true/false")
        return self

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able form, entries sorted by path."""
        return {
            "schema": self.schema,
            "run_id": self.run_id,
            "created_at": self.created_at,
            "entries": [asdict(e) for e in sorted(self.entries, key=lambda e: e.path)],
        }

    def to_json(self) -> bytes:
        """Canonical bytes, so the file's sha256 is the manifest hash."""
        return canonical_json(self.to_dict())

    @property
    def sha256(self) -> str:
        """The manifest hash: sha256 of its canonical JSON."""
        return hashlib.sha256(self.to_json()).hexdigest()

    def live(self) -> List[Entry]:
        """Entries still on the box."""
        return [e for e in self.entries if not e.pruned]

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> Manifest:
        """Parse and validate; raises ManifestError on anything malformed."""
        if not isinstance(d, dict) or not isinstance(d.get("entries"), list):
            raise ManifestError("manifest is not an object with an entries list")
        if len(d["entries"]) > MAX_ENTRIES:
            raise ManifestError(f"the manifest lists {len(d['entries'])} files, more than the {MAX_ENTRIES} "
                                "rgt accepts: narrow the artifact globs")
        try:
            entries = [Entry(**e) for e in d["entries"]]
            m = cls(
                run_id=d["run_id"], entries=entries, created_at=d.get("created_at", 0.0),
                schema=d.get("schema", ""),
            )
        except (TypeError, KeyError) as e:
            raise ManifestError(f"manifest entry is malformed: {e}") from None
        return m.validate()

    @classmethod
    def from_bytes(cls, raw: bytes, source: str = "manifest.json") -> Manifest:
        """Parse manifest bytes; a truncated, oversized or too deeply nested file is a one-line ManifestError."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{source} is over {MAX_MANIFEST_BYTES >> 20} MiB: refused (narrow the artifact globs)")
        try:
            d = json.loads(raw.decode("utf-8"))
        except RecursionError:
            raise ManifestError(f"{source} is nested too deeply: not a manifest") from None
        except (UnicodeDecodeError, ValueError):
            raise ManifestError(f"{source} is truncated or not JSON") from None
        return cls.from_dict(d)


def build_manifest(
    root: str,
    run_id: str,
    roster: Iterable[Tuple[str, str]],
    pruned: Optional[Dict[str, Entry]] = None,
    known: Optional[Dict[str, Tuple[int, int, str]]] = None,
) -> Manifest:
    """Hash every ``(relpath, kind)`` of the roster under ``root``.

    Symlinks and non-regular files are refused. ``pruned`` carries entries that retention removed
    from the box; ``known`` maps a path to ``(size, mtime_ns, sha256)`` already computed, reused only when
    both size and mtime still match.
    """
    entries: List[Entry] = []
    for rel, kind in roster:
        check_rel_path(rel)
        full = os.path.join(root, rel)
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            raise ManifestError(f"{rel!r} is a symlink: refusing to put it in the manifest")
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(f"{rel!r} is not a regular file")
        prior = (known or {}).get(rel)
        fresh = prior is not None and prior[:2] == (st.st_size, st.st_mtime_ns)
        digest = prior[2] if fresh else sha256_file(full)
        entries.append(Entry(rel, st.st_size, digest, kind))
    for rel, e in (pruned or {}).items():
        if all(x.path != rel for x in entries):
            entries.append(Entry(e.path, e.size_bytes, e.sha256, e.kind, True))
    return Manifest(run_id=run_id, entries=entries, created_at=time.time()).validate()
