"""Plain PyTorch loops printing what popular scripts print (trainer venv or rgt's venv: only torch needed).

--style nanogpt: karpathy/nanoGPT train.py's lines (`iter N: loss X, time Tms, mfu M%`, the eval line, and
`saving checkpoint to out`), overwriting out/ckpt.pt. --style tutorial: the pytorch-tutorial line
`Epoch [e/E], Step [i/N], Loss: x`. --style plain: `step N/M loss X`.
--nan-after K makes the loss non-finite from step K (a real torch NaN).
"""

import argparse
import os
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--style", choices=("nanogpt", "tutorial", "plain"), default="nanogpt")
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--nan-after", type=int, default=None)
    ap.add_argument("--hold", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    out_dir, log_interval, eval_interval = "out", 1, 5
    t0 = time.time()
    if args.style == "nanogpt":
        running_mfu = -1.0
        for iter_num in range(args.iters + 1):
            if iter_num % eval_interval == 0:
                with torch.no_grad():
                    losses = {"train": torch.nn.functional.mse_loss(model(x), y).item(),
                              "val": torch.nn.functional.mse_loss(model(x[:8]), y[:8]).item()}
                # nanoGPT train.py's eval line and its save
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                if iter_num > 0:
                    print(f"saving checkpoint to {out_dir}")
                    os.makedirs(out_dir, exist_ok=True)
                    torch.save({"model": model.state_dict(), "iter_num": iter_num}, os.path.join(out_dir, "ckpt.pt"))
            loss = torch.nn.functional.mse_loss(model(x), y)
            if args.nan_after is not None and iter_num >= args.nan_after:
                loss = loss * torch.log(torch.tensor(-1.0))
            opt.zero_grad()
            loss.backward()
            opt.step()
            t1 = time.time()
            dt = t1 - t0
            t0 = t1
            if iter_num % log_interval == 0:
                lossf = loss.item()
                if iter_num >= 5:
                    running_mfu = 0.01 if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * 0.01
                # nanoGPT train.py's line, verbatim
                print(f"iter {iter_num}: loss {lossf:.4f}, time {dt*1000:.2f}ms, mfu {running_mfu*100:.2f}%")
    elif args.style == "plain":
        for step in range(1, args.iters + 1):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            print(f"step {step}/{args.iters} loss {loss.item():.4f}", flush=True)
    else:
        num_epochs, total_step = 2, 8
        for epoch in range(num_epochs):
            for i in range(total_step):
                loss = torch.nn.functional.mse_loss(model(x), y)
                if args.nan_after is not None and epoch * total_step + i >= args.nan_after:
                    loss = loss * torch.log(torch.tensor(-1.0))
                opt.zero_grad()
                loss.backward()
                opt.step()
                if (i + 1) % 2 == 0:
                    # pytorch-tutorial's line, verbatim
                    print('Epoch [{}/{}], Step [{}/{}], Loss: {:.4f}'  # noqa: UP032 - verbatim
                          .format(epoch + 1, num_epochs, i + 1, total_step, loss.item()))
    while args.hold and not os.path.exists(args.hold):
        time.sleep(0.1)


if __name__ == "__main__":
    main()
