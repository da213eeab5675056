"""What a checkpoint check may load from a pickle, on box and laptop: a numpy allowlist, and an opcode scan.

Nothing here runs a pickle. Stdlib only; numpy is imported when asked for.
"""

from __future__ import annotations

import importlib
import os
import pickletools
import warnings
import zipfile
from typing import Any, List, Optional

METADATA_MAX_BYTES = 64 << 20


def numpy_safe_globals() -> List[Any]:
    """The numpy array, scalar and dtype rebuilders: they allocate and set dtypes, never call user code.

    An object array's items are still unpickled by torch's weights-only loader. [] without numpy.
    """
    try:
        import numpy
    except ImportError:
        return []
    out: List[Any] = [numpy.ndarray, numpy.dtype]
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 renamed core to _core
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                multiarray = importlib.import_module(name)
            # _reconstruct allocates an ndarray; scalar builds a numpy scalar from a dtype and raw bytes
            out += [multiarray._reconstruct, multiarray.scalar]
            break
        except (ImportError, AttributeError):
            continue
    dtypes = getattr(numpy, "dtypes", None)  # numpy >= 1.25: one class per dtype, each must be allowed to BUILD
    if dtypes is not None:
        out += [v for v in vars(dtypes).values() if isinstance(v, type) and issubclass(v, numpy.dtype)]
    return out


class HoldsTensors(ValueError):
    """The pickle refers to tensor storage: it is state, not metadata."""


def pickle_globals(data: bytes) -> List[str]:
    """The globals a pickle stream names, read opcode by opcode without running it; ValueError if malformed."""
    names: List[str] = []
    strings: List[str] = []
    seen_stop = False
    for op, arg, _pos in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            names.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.append(f"{strings[-2]}.{strings[-1]}")
        elif op.name in ("BINPERSID", "PERSID"):
            raise HoldsTensors("it refers to tensor storage")
        if isinstance(arg, str):
            strings.append(arg)
        seen_stop = op.name == "STOP"
    if not seen_stop:
        raise ValueError("pickle stream does not end with STOP")
    names = ["builtins." + n[len("__builtin__."):] if n.startswith("__builtin__.") else n for n in names]  # protocol 2
    return list(dict.fromkeys(names))  # in order of appearance: the outermost object's class first


def metadata_globals(path: str) -> Optional[List[str]]:
    """The globals of a pickled metadata file (a torch zip or a plain pickle), None when it holds tensors.

    ValueError when it is not a well-formed pickle; zipfile.BadZipFile / OSError pass through.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            pkl = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
            if len(pkl) != 1 or pkl[0].file_size > METADATA_MAX_BYTES:
                return None
            if any("/data/" in i.filename for i in infos):
                return None  # tensor storages: a real state file under a metadata name
            data = z.read(pkl[0])
    else:
        if os.path.getsize(path) > METADATA_MAX_BYTES:
            return None
        with open(path, "rb") as f:
            data = f.read()
    try:
        return pickle_globals(data)
    except HoldsTensors:
        return None
