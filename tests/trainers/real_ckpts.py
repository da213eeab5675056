"""Write real checkpoints with the real frameworks (trainer venv), for the verifier's tests.

argv: OUT. Writes OUT/lightning/*.ckpt (default ModelCheckpoint), OUT/lightning_nan.ckpt (weights set to NaN,
saved by Lightning), OUT/hf/checkpoint-N/ (HF Trainer, save_steps) and OUT/plain_sd.pt (a state dict).
"""

import os
import sys

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


class Tiny(pl.LightningModule):
    def __init__(self, width=8):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(width, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class Ids(torch.utils.data.Dataset):
    def __init__(self, n, length=8, vocab=64):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(out):
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 8), torch.randn(32, 1)), batch_size=4)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "lightning"), every_n_train_steps=4)
    trainer = pl.Trainer(max_steps=8, callbacks=[ckpt], accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    model = Tiny()
    trainer.fit(model, data)
    with torch.no_grad():
        model.layer.weight[0, 3] = float("nan")
    trainer.save_checkpoint(os.path.join(out, "lightning_nan.ckpt"))
    torch.save(model.state_dict(), os.path.join(out, "plain_sd.pt"))

    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    args = TrainingArguments(output_dir=os.path.join(out, "hf"), max_steps=4, save_steps=2,
                             per_device_train_batch_size=4, report_to=[], use_cpu=True, logging_steps=1)
    Trainer(model=gpt, args=args, train_dataset=Ids(16)).train()


if __name__ == "__main__":
    main(sys.argv[1])
