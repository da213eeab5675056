"""Regenerates tests/fixtures/progress/*.log: the raw bytes real trainers print (trainer venv).

    .venv-trainer/bin/python tests/trainers/capture.py [NAME...]

Each trainer runs in a scratch dir with stdout and stderr merged into one file, as the agent's waiter
writes trainer.log (carriage returns, escapes and all). The table tests read these files.
"""

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "fixtures", "progress")
REPO = os.path.dirname(os.path.dirname(HERE))

RUNS = {
    "lightning_tqdm": ["lightning_tiny.py", "--bar", "tqdm"],
    "hf_trainer": ["hf_tiny.py"],
    "nanogpt": ["loops.py", "--style", "nanogpt"],
    "nanogpt_nan": ["loops.py", "--style", "nanogpt", "--nan-after", "9"],
    "tutorial": ["loops.py", "--style", "tutorial"],
    "plain": ["loops.py", "--style", "plain", "--iters", "6"],
    "demo": [os.path.join(REPO, "agent", "demo", "train.py"), "--steps", "6", "--step-sleep-s", "0"],
}


def capture(name, argv, python=sys.executable):
    """Run one trainer; its merged output as bytes."""
    only = sys.argv[1:]
    if only and name not in only:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "trainer.log")
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=REPO if name == "demo" else "")
        with open(out, "wb") as f:
            subprocess.run([python, os.path.join(HERE, argv[0]), *argv[1:]], cwd=scratch, stdout=f,
                           stderr=subprocess.STDOUT, env=env, check=True, timeout=600)
        with open(out, "rb") as f:
            return f.read()


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, argv in RUNS.items():
        data = capture(name, argv)
        if data is None:
            continue
        with open(os.path.join(OUT, name + ".log"), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
