"""A real Hugging Face Trainer whose loss turns NaN at a given step (the weights follow), under rgt.

argv: NAN_FROM EVERY. NaN losses are logged only with ``logging_nan_inf_filter=False``: by default the
Trainer replaces them with the running average in its logs. It reports through rgt's HF callback too.
"""

import os
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from rgt.agent.integrations.hf import RgtCallback

NAN_FROM, EVERY = int(sys.argv[1]), int(sys.argv[2])


class Ids(torch.utils.data.Dataset):
    def __len__(self):
        return 100000

    def __getitem__(self, i):
        ids = torch.randint(0, 64, (8,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}


class NanTrainer(Trainer):
    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        if self.state.global_step + 1 >= NAN_FROM:  # the step being computed
            loss = loss * float("nan")
        return loss


class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        time.sleep(0.05)


def main():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    args = TrainingArguments(output_dir=os.environ["RGT_CKPT_DIR"], max_steps=100000, save_steps=EVERY,
                             per_device_train_batch_size=4, report_to=[], use_cpu=True, logging_steps=1,
                             logging_nan_inf_filter=False, dataloader_num_workers=0)
    trainer = NanTrainer(model=model, args=args, train_dataset=Ids(), callbacks=[RgtCallback(), Slow()])
    trainer.train(resume_from_checkpoint=os.environ.get("RGT_RESUME_FROM") or None)


if __name__ == "__main__":
    main()
