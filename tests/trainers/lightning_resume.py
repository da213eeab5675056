"""A real Lightning run under rgt: the default ModelCheckpoint every N steps, then resumed after a kill.

It resumes from $RGT_RESUME_FROM with Lightning's own ``trainer.fit(..., ckpt_path=...)``.

argv: STEPS EVERY SLEEP_S. The checkpoints go where Lightning puts them by default (./checkpoints/ under
the working dir, as there is no logger), where the agent looks for new checkpoint files too. Attempt 1
holds after its first save until ./release exists (a test kills it there: mid-run, whatever the machine's
speed). Appends one JSON line per start and per end to ./attempts.jsonl (global step, attempt, resume
path), so a test reads what Lightning itself resumed to.
"""

import json
import os
import sys
import time

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

STEPS, EVERY, SLEEP_S = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])


def note(**kw):
    kw.update(attempt=os.environ.get("RGT_ATTEMPT"), resume_from=os.environ.get("RGT_RESUME_FROM"))
    with open("attempts.jsonl", "a") as f:
        f.write(json.dumps(kw) + "\n")


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        time.sleep(SLEEP_S)
        if os.environ.get("RGT_ATTEMPT") == "1" and self.global_step >= EVERY:
            print(f"holding at global_step={self.global_step}", flush=True)
            while not os.path.exists("release"):
                time.sleep(0.1)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        print(f"global_step={self.global_step} loss={loss.item():.4f}", flush=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class Record(pl.Callback):
    def on_train_start(self, trainer, module):
        note(event="start", global_step=trainer.global_step)

    def on_train_end(self, trainer, module):
        note(event="end", global_step=trainer.global_step)


def main():
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(4000, 8), torch.randn(4000, 1)), batch_size=4)
    ckpt = pl.callbacks.ModelCheckpoint(every_n_train_steps=EVERY)
    trainer = pl.Trainer(max_steps=STEPS, callbacks=[ckpt, Record()], accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny(), data, ckpt_path=os.environ.get("RGT_RESUME_FROM"))


if __name__ == "__main__":
    main()
