"""Checking pulled checkpoints on the laptop without ever unpickling (shared.ckptcheck's weights-only checks).

Each file gets one verdict and says how it was checked: ``weights_only`` (torch's weights-only loader),
``safetensors`` (header and byte ranges parsed), ``structure`` (a torch zip whose loading needs full
unpickling: every member's CRC and the pickle's opcodes read, nothing run) or ``hash`` (nothing more than
its sha256 can be checked without running it). Full unpickling is never done here: it can run the box's
code, and would need the trainer's libraries (numpy, transformers) in rgt's own venv.
"""

from __future__ import annotations

import os
import pickletools
import warnings
import zipfile
from typing import NamedTuple, Optional

from rgt.shared.ckptcheck import verify_path

HOWS = ("weights_only", "safetensors", "structure", "hash")
MAX_EXPANSION = 4  # torch stores zip members uncompressed: members far larger than the file are a zip bomb


class Check(NamedTuple):
    """One file's verdict: the problem (None when fine) and how it was checked (one of HOWS)."""

    problem: Optional[str]
    how: str


def _zip_structure(path: str) -> Optional[str]:
    """None when every member of the zip reads back with its CRC and its pickle parses opcode by opcode."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            if bad:
                return f"CRC mismatch in member {bad}"
            for info in z.infolist():
                if info.filename.endswith(".pkl"):
                    for _ in pickletools.genops(z.read(info)):  # parses only: no object is built, no code runs
                        pass
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"broken zip archive: {e}"
    return None


def _expansion_problem(path: str) -> Optional[str]:
    """A zip whose members would expand far beyond its size is refused before anything reads them."""
    try:
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as z:
            total = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None  # not a readable zip: the checks below say what it is
    if total > MAX_EXPANSION * size + (1 << 20):
        return f"zip members expand to {total} bytes from a {size}-byte file: refused (not how torch saves)"
    return None


def check(path: str) -> Check:
    """Check one pulled checkpoint file; never unpickles beyond torch's weights-only loader."""
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        bomb = _expansion_problem(path)
        if bomb:
            return Check(bomb, "structure")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's import notes and deprecations are not findings
        r = verify_path(path)
    kind, detail = r["kind"], r["detail"]
    if kind == "verified":
        how = str(r.get("how") or "")
        if r.get("hash_only") or how == "hash only":
            return Check(None, "structure" if is_zip else "hash")
        return Check(None, "safetensors" if path.endswith(".safetensors") else "weights_only")
    if kind == "unverified_pickle":  # covered by its hash; a zip also by its CRCs and pickle opcodes
        if not is_zip:
            return Check(None, "hash")
        problem = _zip_structure(path)
        return Check(f"does not load: {problem}" if problem else None, "structure")
    if kind == "unverifiable":
        return Check("cannot be load-checked: torch is not importable in rgt's environment (reinstall with "
                     "./install.sh)", "hash")
    if kind == "corrupt" and detail.startswith(("no such file", "unreadable")):
        return Check(detail, "hash")
    return Check(detail if kind == "nonfinite" else f"does not load: {detail}", "weights_only")


def load_problem(path: str) -> Optional[str]:
    """None when the checkpoint passes ``check`` (loaded with weights_only, or covered by hash and structure)."""
    return check(path).problem
