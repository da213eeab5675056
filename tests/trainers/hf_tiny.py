"""A tiny real Hugging Face Trainer run (trainer venv): GPT-2 from a config, in-memory input_ids, default logging.

argv: [--rgt] [--steps N] [--hold FILE] [--out DIR]. --rgt adds rgt's TrainerCallback; --hold waits for FILE
before exiting, so a test can look at a live run. Checkpoints go to DIR/checkpoint-N, the model to DIR/final.
"""

import argparse
import os
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


class Ids(torch.utils.data.Dataset):
    def __init__(self, n, length=16, vocab=64):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rgt", action="store_true")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--hold", default=None)
    ap.add_argument("--out", default="out")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    targs = TrainingArguments(output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=4,
                              logging_steps=2, save_steps=args.steps // 2, eval_strategy="steps",
                              eval_steps=args.steps // 2, per_device_eval_batch_size=4, report_to=[],
                              use_cpu=True, dataloader_num_workers=0)
    callbacks = []
    if args.rgt:
        from rgt.agent.integrations.hf import RgtCallback

        callbacks.append(RgtCallback())
    trainer = Trainer(model=model, args=targs, train_dataset=Ids(64), eval_dataset=Ids(8), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=os.environ.get("RGT_RESUME_FROM") or None)
    trainer.save_model(os.path.join(args.out, "final"))
    while args.hold and not os.path.exists(args.hold):
        time.sleep(0.1)


if __name__ == "__main__":
    main()
