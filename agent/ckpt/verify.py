"""Checkpoint verifier (nice'd subprocess, trainer's python, on the box): one JSON line per path.

The checks themselves live in rgt.shared.ckptcheck, shared with the laptop's `rgt verify`. Each line has
kind (verified, unverified_pickle, corrupt, nonfinite, unverifiable), detail, tensors, how, coverage ("full",
or "partial" when hash_only names files covered by their hash and a structure check only). Nothing is
ever unpickled here, whatever the run's allow_pickle.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import List

from rgt.shared.ckptcheck import verify_path


def main(argv: List[str]) -> int:
    """Verify each path; one JSON line each on stdout; 0 when all verified, 1 otherwise, 2 on usage."""
    paths = [a for a in argv if a != "--"]
    if not paths:
        print("usage: verify PATH...", file=sys.stderr)
        return 2
    try:
        os.nice(10)
    except OSError:
        pass
    warnings.filterwarnings("ignore")  # torch's NumPy notice and deprecations must not fill our pipes
    try:
        import torch

        torch.set_num_threads(1)  # leave the cores to the trainer
    except ImportError:
        pass  # verify_path reports "unverifiable"
    ok = True
    for p in paths:
        r = verify_path(p)
        r["path"] = p
        ok = ok and r["ok"]
        sys.stdout.write(json.dumps(r, sort_keys=True) + "\n")
        sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
