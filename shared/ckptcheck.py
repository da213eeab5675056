"""Checkpoint checks for both sides (box verifier, laptop verify): safe load, intact bytes, finite tensors.

``verify_path`` returns {"ok", "kind", "detail", "tensors"}, kind one of verified, unverified_pickle,
corrupt, nonfinite, unverifiable. It never unpickles anything beyond torch's weights-only loader, and
never reports "verified" when torch is missing. Stdlib only; torch is imported when called.
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import struct
import sys
import warnings
import zipfile
from typing import Any, Dict, List, Optional, Tuple

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# Worst first: a directory checkpoint takes the worst kind of its files.
SEVERITY = ["corrupt", "nonfinite", "unverifiable", "unverified_pickle", "verified"]
SAFETENSORS_DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
    "U8": ("uint8", 1), "BOOL": ("bool", 1),
}


def result(kind: str, detail: str, tensors: Optional[int] = None) -> Dict[str, Any]:
    """One verdict, with the detail cut to a line a person reads."""
    if len(detail) > 400:
        detail = detail[:397] + "..."
    return {"ok": kind == "verified", "kind": kind, "detail": detail, "tensors": tensors}


def walk_tensors(obj: Any, torch: Any, where: str, out: List[Tuple[str, Any]]) -> None:
    """Collect (dotted name, tensor) from nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        out.append((where, obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            walk_tensors(v, torch, f"{where}.{k}" if where else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            walk_tensors(v, torch, f"{where}[{i}]", out)


def nonfinite_names(tensors: List[Tuple[str, Any]], torch: Any) -> List[str]:
    """Names of floating or complex tensors holding NaN or inf."""
    bad = []
    for name, t in tensors:
        if not (t.is_floating_point() or t.is_complex()):
            continue
        try:
            if not bool(torch.isfinite(t).all()):
                bad.append(name)
        except (RuntimeError, TypeError):
            continue  # quantized or exotic storage: loading it was the check we can do
    return bad


def _zip_damage(path: str) -> Optional[str]:
    """A CRC or structure error in a torch zip checkpoint (catches zero-filled blocks after a crash)."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if infos and all(i.CRC == 0 for i in infos if i.file_size):
                return None  # written with CRCs off; nothing to compare against
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"broken zip archive: {e}"
    return f"CRC mismatch in member {bad}" if bad else None


def _pickle_reason(e: BaseException) -> str:
    for line in str(e).splitlines():
        if "Unsupported global" in line or "GLOBAL" in line:
            return line.strip()
    return str(e).splitlines()[0].strip() if str(e) else type(e).__name__


def verify_torch_file(path: str, torch: Any) -> Dict[str, Any]:
    """Weights-only load (memory-mapped when the format allows it), CRCs, and finiteness."""
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        damage = _zip_damage(path)
        if damage:
            return result("corrupt", damage)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
        except TypeError:  # torch < 2.1: no mmap argument
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg and (is_zip or "GLOBAL" in msg or "Unsupported" in msg):
            return result("unverified_pickle", "needs full unpickling: " + _pickle_reason(e))
        return result("corrupt", _pickle_reason(e))
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, IndexError) as e:
        return result("corrupt", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    tensors: List[Tuple[str, Any]] = []
    walk_tensors(obj, torch, "", tensors)
    bad = nonfinite_names(tensors, torch)
    if bad:
        return result("nonfinite", f"{len(bad)} tensor(s) hold NaN or inf: {', '.join(bad[:5])}", len(tensors))
    return result("verified", "loads with weights_only=True; all floating tensors finite", len(tensors))


def verify_safetensors(path: str, torch: Any) -> Dict[str, Any]:
    """Parse the header ourselves, check every byte range, and check floats for NaN/inf."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return result("corrupt", "shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            return result("corrupt", f"header length {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            return result("corrupt", f"unreadable header: {e}")
    if not isinstance(header, dict):
        return result("corrupt", "header is not a JSON object")
    data_len, end_max, count, bad = size - 8 - n, 0, 0, []
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        try:
            for name, info in entries:
                try:
                    dtype, itemsize = SAFETENSORS_DTYPES.get(info["dtype"], (None, None))
                    begin, end = (int(x) for x in info["data_offsets"])
                    numel = 1
                    for d in info["shape"]:
                        numel *= int(d)
                except (KeyError, TypeError, ValueError):
                    return result("corrupt", f"bad header entry for {name}")
                if not 0 <= begin <= end <= data_len:
                    return result("corrupt", f"tensor {name} lies past the end of the file (cut?)")
                if itemsize is not None and end - begin != numel * itemsize:
                    return result("corrupt", f"tensor {name} has {end - begin} bytes for {numel} elements")
                end_max, count = max(end_max, end), count + 1
                tdtype = getattr(torch, dtype, None) if dtype else None
                if tdtype is not None and numel and mm is not None:
                    t = torch.frombuffer(mm, dtype=tdtype, count=numel, offset=8 + n + begin)
                    if nonfinite_names([(name, t)], torch):
                        bad.append(name)
                    del t
        finally:
            if mm is not None:
                mm.close()
    if end_max != data_len:
        return result("corrupt", f"data section is {data_len} bytes, tensors cover {end_max}")
    if bad:
        return result("nonfinite", f"{len(bad)} tensor(s) hold NaN or inf: {', '.join(bad[:5])}", count)
    return result("verified", "safetensors header and byte ranges consistent; floats finite", count)


def verify_path(path: str) -> Dict[str, Any]:
    """Verify one checkpoint file or checkpoint directory."""
    if not os.path.lexists(path):
        return result("corrupt", "no such file")
    try:
        import torch
    except ImportError as e:
        return result("unverifiable", f"torch is not importable under {sys.executable}: {e}")
    if not os.path.isdir(path):
        return _verify_file(path, torch)
    kinds, total, details = [], 0, []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if name.endswith(".json"):
                try:
                    with open(full, "rb") as f:
                        json.loads(f.read().decode("utf-8"))
                except (OSError, UnicodeDecodeError, ValueError) as e:
                    kinds.append("corrupt")
                    details.append(f"{rel}: unreadable JSON ({e})")
                continue
            if not name.endswith(TORCH_SUFFIXES + (".safetensors",)):
                continue
            r = _verify_file(full, torch)
            kinds.append(r["kind"])
            total += r["tensors"] or 0
            if r["kind"] != "verified":
                details.append(f"{rel}: {r['detail']}")
    if not kinds:
        return result("corrupt", "no weight files inside the checkpoint directory")
    worst = min(kinds, key=SEVERITY.index)
    return result(worst, "; ".join(details) or f"{len(kinds)} files verified", total)


def _verify_file(path: str, torch: Any) -> Dict[str, Any]:
    try:
        if path.endswith(".safetensors"):
            return verify_safetensors(path, torch)
        return verify_torch_file(path, torch)
    except OSError as e:
        return result("corrupt", f"unreadable: {e}")
