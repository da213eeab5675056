"""Measures status polling over a real sshd on this machine, as ratios against `ssh -S ctl host cat status.json`.

(a) observe.poll in process on a warm SSHTransport, against the raw cat on the same connection
    (goal <= 1.1x); (b) `rgt status RUN` end to end (the console script as a subprocess) against the
    same raw cat (goal <= 1.5x). Both are measured on loopback and through a relay (a ProxyCommand)
    that adds the round-trip times of real links (--rtt-ms, default 20,80), since loopback ssh
    answers in ~7 ms and makes any fixed cost of a box-side process or of Python look large.
The rgt modules are byte-compiled into a private pycache first, as an install would have them.
Usage: python benchmarks/status_poll.py [--samples N] [--rtt-ms MS[,MS...]]
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import median  # noqa: E402
from tests.sshbox import RGT, SSHBox  # noqa: E402

TRAINER = "import time\nfor i in range(1, 10**6):\n    print(f'step={i}', flush=True)\n    time.sleep(0.5)\n"


def relay(host: str, port: int, one_way_s: float) -> None:
    """A ProxyCommand: stdin/stdout <-> TCP, each chunk held back ``one_way_s`` in each direction."""
    sock = socket.create_connection((host, port))

    def pump(read, write, done) -> None:
        q: queue.Queue = queue.Queue()

        def reader() -> None:
            while True:
                data = read()
                q.put((time.monotonic() + one_way_s, data))
                if not data:
                    return

        threading.Thread(target=reader, daemon=True).start()
        while True:
            due, data = q.get()
            time.sleep(max(0.0, due - time.monotonic()))
            if not data:
                done()
                return
            write(data)

    def to_stdout(data: bytes) -> None:
        while data:
            data = data[os.write(1, data):]

    up = threading.Thread(target=pump, args=(lambda: os.read(0, 65536), sock.sendall,
                                             lambda: sock.shutdown(socket.SHUT_WR)), daemon=True)
    up.start()
    pump(lambda: sock.recv(65536), to_stdout, lambda: None)


def timed(argv, env) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - t0


def measure(box: SSHBox, alias: str, run_id: str, samples: int) -> dict:
    """Medians for one destination, each side on the same ControlMaster, interleaved."""
    from rgt.controller.observe import poll
    from rgt.controller.registry import RunRecord
    from rgt.controller.transport.ssh import SSHTransport

    state = tempfile.mkdtemp(prefix="rgt-bst-", dir="/tmp")
    env = box.env(state)
    try:
        subprocess.run([RGT, "attach", alias, run_id], env=env, check=True, capture_output=True)
        t = SSHTransport(alias, ssh_config=str(box.ssh_config), state=Path(state))
        rec = RunRecord(run_id=run_id, host=alias, root=t.root)
        for _ in range(3):
            poll(t, rec)
        raw = ["ssh", "-F", str(box.ssh_config), "-S", t.control_path(), "-o", "ControlMaster=no", alias,
               "cat", f"{rec.run_dir}/status.json"]
        cli = [RGT, "status", run_id]
        timed(raw, env)
        timed(cli, env)
        polls, raws, clis = [], [], []
        for _ in range(samples):
            t0 = time.perf_counter()
            assert poll(t, rec).status is not None
            polls.append(time.perf_counter() - t0)
            raws.append(timed(raw, env))
            clis.append(timed(cli, env))
        return {"poll": median(polls), "raw": median(raws), "cli": median(clis)}
    finally:
        subprocess.run([*SSHTransport(alias, ssh_config=str(box.ssh_config), state=Path(state)).ssh_base(),
                        "-O", "exit", alias], capture_output=True, check=False)
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=31)
    ap.add_argument("--rtt-ms", default="20,80", help="emulated round-trip times, comma-separated")
    ap.add_argument("--relay", nargs=3, metavar=("HOST", "PORT", "ONE_WAY_S"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.relay:
        relay(a.relay[0], int(a.relay[1]), float(a.relay[2]))
        return
    box = SSHBox()
    links = [("loopback", box.alias)]
    with open(box.ssh_config, "a") as f:
        for rtt_ms in (float(x) for x in a.rtt_ms.split(",") if x.strip()):
            slow = f"{box.alias}-rtt{rtt_ms:g}"
            links.append((f"rtt {rtt_ms:g} ms", slow))
            f.write(f"Host {slow}\n  HostName 127.0.0.1\n  Port {box.port}\n  User {box.login}\n"
                    f"  IdentityFile {box.client_key}\n  IdentitiesOnly yes\n  HostKeyAlias {box.alias}\n"
                    f"  ProxyCommand {sys.executable} {Path(__file__).resolve()} --relay %h %p {rtt_ms / 2000}\n")
    # PYTHONDONTWRITEBYTECODE would make every `rgt status` compile rgt's modules again.
    pyc = tempfile.mkdtemp(prefix="rgt-bpyc-")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = pyc
    code = tempfile.mkdtemp(prefix="rgt-bcode-")
    state = tempfile.mkdtemp(prefix="rgt-bst-", dir="/tmp")
    try:
        box.start()
        Path(code, "train.py").write_text(TRAINER)
        subprocess.run([RGT, "up", box.alias, "--run", "bench", "--code", code, "--", "python", "train.py"],
                       env=box.env(state), check=True, capture_output=True)
        print(f"status poll over a real sshd, {a.samples} samples each, medians (ms); goals: poll <= 1.1x, "
              f"rgt status <= 1.5x the raw cat")
        print(f"{'link':>14} {'raw cat':>9} {'poll':>9} {'ratio':>6} {'rgt status':>11} {'ratio':>6}")
        for label, alias in links:
            m = measure(box, alias, "bench", a.samples)
            print(f"{label:>14} {m['raw'] * 1e3:9.1f} {m['poll'] * 1e3:9.1f} {m['poll'] / m['raw']:5.2f}x "
                  f"{m['cli'] * 1e3:11.1f} {m['cli'] / m['raw']:5.2f}x")
    finally:
        subprocess.run([RGT, "stop", "bench", "--wait-s", "10"], env=box.env(state), capture_output=True,
                       check=False)
        box.close()
        shutil.rmtree(code, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(pyc, ignore_errors=True)


if __name__ == "__main__":
    main()
