"""Loud lines for status.json (on the box) about every checkpoint that is no resume target, and why."""

from __future__ import annotations

from typing import Any, Dict, List

MAX_CKPT_WARNINGS = 8


def ckpt_warnings(records: List[Dict[str, Any]], allow_pickle: bool) -> List[str]:
    """Newest first: quarantined, unverified pickle, unverifiable, written after a NaN, failed durable copy."""
    out = []
    for r in reversed(records):
        path, state, detail = r.get("path"), r.get("state"), r.get("detail")
        if r.get("pruned") and not r.get("quarantined"):
            continue
        if r.get("quarantined"):
            out.append(f"QUARANTINED {path} ({state}: {detail}); moved to {r['quarantined']}")
        elif state == "unverified_pickle":
            out.append(f"UNVERIFIED PICKLE {path}: needs full unpickling; " + (
                "a resume target (allow_pickle)" if allow_pickle
                else "not a resume target unless started with `rgt up --allow-pickle`"))
        elif state == "unverifiable":
            out.append(f"CANNOT VERIFY {path}: {detail}; not a resume target")
        elif state != "verified":
            out.append(f"{str(state).upper()} {path}: {detail}; not a resume target")
        elif r.get("nan_suspect"):
            out.append(f"AFTER NaN {path}: written after the loss went non-finite; not a resume target")
        elif r.get("durable_error"):
            out.append(f"DURABLE COPY FAILED {path}: {r['durable_error']}")
    if len(out) > MAX_CKPT_WARNINGS:
        out = out[:MAX_CKPT_WARNINGS - 1] + [f"... and {len(out) - MAX_CKPT_WARNINGS + 1} more (see `rgt events`)"]
    return out
