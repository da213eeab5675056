"""Safe-loading pulled checkpoints on the laptop, with the checks the box's verifier uses (shared.ckptcheck)."""

from __future__ import annotations

import warnings
from typing import Any, Optional

from rgt.shared.ckptcheck import nonfinite_names, verify_path, walk_tensors

PICKLE_REFUSED = ("needs full unpickling, which can run code: verify it with --allow-pickle only if you trust "
                  "where it came from")


def load_problem(path: str, allow_pickle: bool) -> Optional[str]:
    """None when the checkpoint loads safely and every floating tensor is finite; else why not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's import notes (NumPy missing) and deprecations are not findings
        r = verify_path(path)
        kind = r["kind"]
        if kind == "verified":
            return None
        if kind == "unverifiable":
            return "cannot be load-checked: torch is not importable in rgt's environment (reinstall with ./install.sh)"
        if kind == "unverified_pickle":
            return _full_unpickle_problem(path) if allow_pickle else PICKLE_REFUSED
        if kind == "corrupt" and r["detail"].startswith(("no such file", "unreadable")):
            return r["detail"]
        return r["detail"] if kind == "nonfinite" else f"does not load: {r['detail']}"


def _full_unpickle_problem(path: str) -> Optional[str]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)  # explicit --allow-pickle only
    except Exception as e:  # noqa: BLE001 - an arbitrary pickle can raise anything
        return f"does not load even with --allow-pickle: {type(e).__name__}: {e}"
    tensors: list[tuple[str, Any]] = []
    walk_tensors(obj, torch, "", tensors)
    bad = nonfinite_names(tensors, torch)
    return f"{len(bad)} tensor(s) hold NaN or inf: {', '.join(bad[:5])}" if bad else None
