"""A tiny real Lightning run on random tensors (trainer venv): the default ModelCheckpoint, a chosen bar.

argv: [--bar tqdm|rich] [--rgt] [--epochs N] [--hold FILE]. --rgt adds rgt's callback; --hold waits for
FILE to exist before exiting, so a test can look at a live run.
"""

import argparse
import os
import time

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bar", choices=("tqdm", "rich"), default="tqdm")
    ap.add_argument("--rgt", action="store_true")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--hold", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(40, 8), torch.randn(40, 1))
    callbacks = [pl.callbacks.TQDMProgressBar() if args.bar == "tqdm" else pl.callbacks.RichProgressBar()]
    if args.rgt:
        from rgt.agent.integrations.lightning import RgtCallback

        callbacks.append(RgtCallback())
    trainer = pl.Trainer(max_epochs=args.epochs, callbacks=callbacks, accelerator="cpu",
                         enable_model_summary=False, limit_val_batches=2, num_sanity_val_steps=1)
    trainer.fit(Tiny(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    while args.hold and not os.path.exists(args.hold):
        time.sleep(0.1)


if __name__ == "__main__":
    main()
