"""The laptop's verify throughput on a 1 GiB HF-style checkpoint dir, against `sha256sum` of the same files.

`rgt verify`'s public entry point (controller.verify.verify_tree) hashes every file against the manifest and
load-checks the checkpoint files without unpickling (safetensors header, weights_only loads, the numpy
allowlist for rng_state.pth, opcode scan of training_args.bin). Both sides read from the page cache; the best
of 3 runs counts.

    .venv/bin/python benchmarks/verify_hf_dir.py [--size-mib N] [--dir D]

The dir holds model.safetensors (about 40 %), optimizer.pt (about 60 %: exp_avg, exp_avg_sq), scheduler.pt,
rng_state.pth (python, numpy and torch RNG state, as the HF Trainer saves it), training_args.bin (a
pickled dataclass), config.json and trainer_state.json; it needs 2x its size on --dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import make_run  # noqa: E402
from rgt.agent import manifest as agent_manifest  # noqa: E402
from rgt.controller import verify  # noqa: E402
from rgt.shared.ckptcheck import verify_path  # noqa: E402
from rgt.shared.paths import RunPaths  # noqa: E402


@dataclasses.dataclass
class TrainingArguments:
    """A stand-in for transformers' dataclass (rgt's venv has no transformers): pickled, never loaded."""

    output_dir: str = "out"
    learning_rate: float = 5e-5
    max_steps: int = 1000


def write_safetensors(path: Path, tensors: dict) -> None:
    """The safetensors format by hand (rgt's venv has no safetensors package): JSON header, raw bytes."""
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        data = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for b in blobs:
            f.write(b)


def make_hf_dir(ckpt: Path, size_mib: int) -> None:
    """checkpoint-1000/ with the files the HF Trainer writes, ``size_mib`` in all (floats finite)."""
    ckpt.mkdir(parents=True)
    n_layers = 8
    per_layer = (size_mib << 20) // 4 // (n_layers * 5)  # floats; 2 of 5 parts weights, 3 optimizer state
    weights = {f"h.{i}.w": torch.randn(per_layer * 2) for i in range(n_layers)}
    write_safetensors(ckpt / "model.safetensors", weights)
    state = {i: {"step": torch.tensor(1000.0), "exp_avg": torch.randn(per_layer * 2),
                 "exp_avg_sq": torch.rand(per_layer)} for i in range(n_layers)}
    torch.save({"state": state, "param_groups": [{"lr": 1e-4, "params": list(range(n_layers))}]},
               ckpt / "optimizer.pt")
    torch.save({"base_lrs": [1e-4], "last_epoch": 1000, "_step_count": 1001}, ckpt / "scheduler.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
               ckpt / "rng_state.pth")
    torch.save(TrainingArguments(), ckpt / "training_args.bin")
    (ckpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": n_layers}))
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 1000, "log_history": []}))


def best_of(n: int, fn) -> float:
    """The fastest of ``n`` timed calls."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    """Build the dir, pull it by copying, time verify_tree against sha256sum, print the ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--dir", default=None, help="where the temp trees go (default: the system temp dir)")
    a = p.parse_args()
    sha256sum = shutil.which("sha256sum")
    if sha256sum is None:
        raise SystemExit("sha256sum is not installed")
    base = Path(tempfile.mkdtemp(prefix="rgt-bench-verify-", dir=a.dir))
    try:
        run = make_run(base / "box", "bench", ["true"], {}, python=sys.executable)
        make_hf_dir(run / "ckpt" / "checkpoint-1000", a.size_mib)
        (run / "DONE").write_text("{}")
        m, _final = agent_manifest.build(RunPaths(str(run)))
        dest = base / "dest"
        for e in m.live():
            (dest / e.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / e.path, dest / e.path)
        (dest / "manifest.json").write_bytes(m.to_json())
        files = [str(dest / e.path) for e in m.live()]
        total = sum(os.path.getsize(f) for f in files)

        def baseline() -> None:
            subprocess.run([sha256sum, *files], check=True, stdout=subprocess.DEVNULL)

        reports = []

        def ours() -> None:
            reports.append(verify.verify_tree(str(dest)))

        baseline()
        ours()  # both read from the page cache from here on
        rep = reports[-1]
        if not rep.ok:
            raise SystemExit(f"the HF-style dir did not verify: {rep.problems[:3]}")
        b, o = best_of(3, baseline), best_of(3, ours)
        ckpt_dir = str(dest / "ckpt" / "checkpoint-1000")
        checks = best_of(3, lambda: verify_path(ckpt_dir))  # the load checks alone, without hashing
        mib = total / (1 << 20)
        print(f"{len(files)} files, {mib:.0f} MiB ({rep.checkpoints} load-checked, {rep.hashed} hashed), "
              f"{os.cpu_count()} cores")
        print(f"sha256sum {b:.3f}s ({mib / b:.0f} MiB/s), rgt verify {o:.3f}s ({mib / o:.0f} MiB/s) "
              f"-> ratio {o / b:.2f}x; the load checks alone {checks:.3f}s; load average "
              f"{os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
