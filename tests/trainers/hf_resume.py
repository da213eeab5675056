"""A real Hugging Face Trainer run under rgt: checkpoint-N/ every N steps into $RGT_CKPT_DIR, then resumed.

It resumes with ``trainer.train(resume_from_checkpoint=$RGT_RESUME_FROM)``.

argv: STEPS EVERY SLEEP_S. Attempt 1 holds after its first save until ./release exists (a test kills it
there). Appends one JSON line per start and per end to ./attempts.jsonl.
"""

import json
import os
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

STEPS, EVERY, SLEEP_S = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])


def note(**kw):
    kw.update(attempt=os.environ.get("RGT_ATTEMPT"), resume_from=os.environ.get("RGT_RESUME_FROM"))
    with open("attempts.jsonl", "a") as f:
        f.write(json.dumps(kw) + "\n")


class Ids(torch.utils.data.Dataset):
    def __init__(self, n, length=8, vocab=64):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Record(TrainerCallback):
    def on_train_begin(self, args, state, control, **kw):
        note(event="start", global_step=state.global_step)

    def on_step_end(self, args, state, control, **kw):
        time.sleep(SLEEP_S)  # the Trainer saves checkpoint-N after this callback, so hold at N + 1
        if os.environ.get("RGT_ATTEMPT") == "1" and state.global_step > EVERY:
            print(f"holding at global_step={state.global_step}", flush=True)
            while not os.path.exists("release"):
                time.sleep(0.1)

    def on_train_end(self, args, state, control, **kw):
        note(event="end", global_step=state.global_step)


def main():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    args = TrainingArguments(output_dir=os.environ["RGT_CKPT_DIR"], max_steps=STEPS, save_steps=EVERY,
                             per_device_train_batch_size=4, report_to=[], use_cpu=True, logging_steps=1,
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=Ids(4 * STEPS), callbacks=[Record()])
    trainer.train(resume_from_checkpoint=os.environ.get("RGT_RESUME_FROM") or None)


if __name__ == "__main__":
    main()
