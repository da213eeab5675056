"""Safe-loading pulled checkpoints on the laptop: torch weights-only or safetensors, every float finite."""

from __future__ import annotations

import json
import mmap
import os
import pickle
import struct
import warnings
import zipfile
from typing import Any, Optional


def load_problem(path: str, allow_pickle: bool) -> Optional[str]:
    """None when the checkpoint loads safely and every floating tensor is finite; else why not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's import notes (NumPy missing) and deprecations are not findings
        try:
            import torch
        except ImportError:
            return "cannot be load-checked: torch is not importable in rgt's environment (reinstall with ./install.sh)"
        try:
            if path.endswith(".safetensors"):
                return _safetensors_problem(path, torch)
            return _torch_problem(path, torch, allow_pickle)
        except OSError as e:
            return f"unreadable: {e.strerror or e}"


def _torch_problem(path: str, torch: Any, allow_pickle: bool) -> Optional[str]:
    is_zip = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" not in str(e):
            return f"does not load: {first}"
        if not allow_pickle:
            return ("needs full unpickling, which can run code: verify it with --allow-pickle only if you trust "
                    "where it came from")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)  # explicit opt-in only
        except Exception as e2:  # noqa: BLE001 - an arbitrary pickle can raise anything
            return f"does not load even with --allow-pickle: {type(e2).__name__}: {e2}"
    except (RuntimeError, EOFError, ValueError, KeyError, AttributeError, IndexError, TypeError) as e:
        return f"does not load: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    bad = []
    _nonfinite(obj, torch, "", bad)
    return f"{len(bad)} tensor(s) hold NaN or inf: {', '.join(bad[:5])}" if bad else None


def _nonfinite(obj: Any, torch: Any, where: str, bad: list[str]) -> None:
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all()):
            bad.append(where or "<root>")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _nonfinite(v, torch, f"{where}.{k}" if where else str(k), bad)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _nonfinite(v, torch, f"{where}[{i}]", bad)


SAFETENSORS_FLOATS = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2)}


def _safetensors_problem(path: str, torch: Any) -> Optional[str]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"header of {n} bytes does not fit the file ({size} bytes): truncated?"
        try:
            header = json.loads(f.read(n).decode("utf-8"))
            spans = [(k, v["dtype"], int(v["data_offsets"][0]), int(v["data_offsets"][1]))
                     for k, v in header.items() if k != "__metadata__"]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "unreadable safetensors header"
        data_len, end_max, bad = size - 8 - n, 0, []
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        try:
            for name, dtype, begin, end in spans:
                if not 0 <= begin <= end <= data_len:
                    return f"tensor {name} lies past the end of the file: truncated?"
                end_max = max(end_max, end)
                if dtype in SAFETENSORS_FLOATS and end > begin and mm is not None:
                    tname, width = SAFETENSORS_FLOATS[dtype]
                    t = torch.frombuffer(mm, dtype=getattr(torch, tname), count=(end - begin) // width,
                                         offset=8 + n + begin)
                    if not bool(torch.isfinite(t).all()):
                        bad.append(name)
                    del t
        finally:
            if mm is not None:
                mm.close()
    if end_max != data_len:
        return f"the data section is {data_len} bytes but its tensors cover {end_max}"
    return f"{len(bad)} tensor(s) hold NaN or inf: {', '.join(bad[:5])}" if bad else None


