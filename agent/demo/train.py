"""Demo trainer (the user's code for `rgt demo`; runs on the box or by hand): tiny deterministic CPU training.

It checkpoints and resumes everything a bitwise-equal resume needs: step, model, optimizer, LR
scheduler, the torch and Python RNG states and the sampler's position. It uses the rgt trainer helper
when it imports (always, under the agent); by hand without rgt it falls back to plain atomic saves.

    python train.py --steps 300 --step-sleep-s 0.05 [--save-every N] [--out final.pt]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Any, Dict, Optional

try:
    from rgt.agent import helper as ckpt
except ImportError:  # run by hand without rgt installed
    ckpt = None


class PlainCheckpoints:
    """The fallback without rgt: synchronous atomic saves to $RGT_CKPT_DIR or ./ckpt, every 50 steps."""

    def __init__(self) -> None:
        self.dir = os.path.abspath(os.environ.get("RGT_CKPT_DIR") or "ckpt")

    def preempted(self) -> bool:
        """No signal handling without rgt."""
        return False

    def should_save(self, step: int) -> bool:
        """A fixed cadence."""
        return step % 50 == 0

    def report(self, step: int, loss: Any = None, phase: Optional[str] = None, **metrics: Any) -> None:
        """Progress goes to stdout only."""

    def wait(self) -> None:
        """Saves are synchronous."""

    def save(self, state: Any, step: int, metrics: Optional[Dict[str, Any]] = None) -> str:
        """Temp name, then rename."""
        import torch

        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, f"step_{step:09d}.pt")
        tmp = os.path.join(self.dir, f".step_{step:09d}.pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    def load_latest(self) -> Any:
        """The newest step file that loads."""
        import torch

        names = sorted(n for n in os.listdir(self.dir) if n.endswith(".pt")) if os.path.isdir(self.dir) else []
        for n in reversed(names):
            try:
                return torch.load(os.path.join(self.dir, n), map_location="cpu", weights_only=True)
            except (RuntimeError, EOFError, OSError):
                continue
        return None


class Sampler:
    """Seeded, generator-based batches: a fresh permutation per epoch; its position is (epoch, pos)."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch, self.seed = n, batch, seed
        self.epoch, self.pos = 0, 0
        self._perm: Any = None

    def _permutation(self) -> Any:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def next_batch(self) -> Any:
        """The next batch's indices."""
        if self.pos + self.batch > self.n:
            self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        if self._perm is None:
            self._perm = self._permutation()
        idx = self._perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return idx

    def state_dict(self) -> Dict[str, int]:
        """The position, for a checkpoint."""
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, d: Dict[str, int]) -> None:
        """Continue from a checkpoint's position."""
        self.epoch, self.pos, self.seed, self._perm = int(d["epoch"]), int(d["pos"]), int(d["seed"]), None


def _as_tuples(x: Any) -> Any:
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def main(argv: Optional[list] = None) -> int:
    """Train, checkpointing and resuming through the helper; 143 after a SIGTERM save."""
    p = argparse.ArgumentParser(description="rgt demo: a tiny deterministic CPU trainer that resumes exactly")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--step-sleep-s", type=float, default=0.05)
    p.add_argument("--save-every", type=int, default=None, help="steps; default: the helper's Young/Daly cadence")
    p.add_argument("--out", default="final.pt", help="final weights file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ck: Any = ckpt if ckpt is not None else PlainCheckpoints()
    ck.preempted()  # arms the SIGTERM flag

    g = torch.Generator().manual_seed(1234)  # the data never changes between runs
    x_all = torch.randn(512, 16, generator=g)
    y_all = x_all @ torch.randn(16, 1, generator=g) + 0.1 * torch.randn(512, 1, generator=g)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.8)
    sampler = Sampler(len(x_all), 32, args.seed)

    start = 0
    state = ck.load_latest()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(_as_tuples(state["rng"]["python"]))
        start = int(state["step"])
        print(f"resumed from step={start} ({getattr(ckpt.get(), 'loaded_path', '') if ckpt else ''})", flush=True)

    loss_value = None
    for step in range(start + 1, args.steps + 1):
        idx = sampler.next_batch()
        xb = x_all[idx] * (1.0 + 0.01 * random.random())  # the Python RNG is part of the state too
        loss = F.mse_loss(model(xb), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss_value = loss.item()
        print(f"step={step} loss={loss_value:.6f}", flush=True)
        ck.report(step, loss=loss_value, phase="train", total_steps=args.steps, lr=sched.get_last_lr()[0])
        due = ck.should_save(step) if args.save_every is None else step % args.save_every == 0
        if due or ck.preempted():
            ck.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "sampler": sampler.state_dict(),
                     "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}},
                    step, metrics={"loss": loss_value})
        if ck.preempted():
            ck.wait()
            print(f"SIGTERM: saved step={step}, exiting to be resumed", flush=True)
            return 128 + 15
        if args.step_sleep_s > 0:
            time.sleep(args.step_sleep_s)
    ck.wait()
    tmp = f"{args.out}.tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, args.out)
    ck.report(args.steps, loss=loss_value, phase="done", total_steps=args.steps)
    print(f"done: {args.steps} steps, final weights in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
