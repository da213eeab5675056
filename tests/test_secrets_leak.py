"""A secret sent with --secret reaches the trainer and nothing else: argv, run files, journal, onstart, rgt output."""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import subprocess
import threading
from pathlib import Path
from typing import Callable, Dict, List

from rgt.shared.secrets import load_secrets
from tests.conftest import scaled, wait_until
from tests.helpers import box_python

pytest_plugins = ["tests.conftest_ssh"]

# Attempt 1 records what it got and waits for "go", then crashes; attempt 2 records again and succeeds.
TRAINER = """\
import hashlib, os, sys, time
attempt = os.environ.get("RGT_ATTEMPT", "0")
with open("seen." + attempt, "w") as f:
    f.write(hashlib.sha256(os.environ.get("LEAK_TOKEN", "").encode()).hexdigest())
print(f"step={attempt}", flush=True)
if attempt == "1":
    while not os.path.exists("go"):
        time.sleep(0.05)
    sys.exit(3)
"""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ArgvScanner(threading.Thread):
    """Reads /proc/*/cmdline of every process on the machine, over and over, looking for the tokens."""

    def __init__(self, needles: List[bytes]) -> None:
        super().__init__(daemon=True)
        self.needles, self.hits, self.scans = needles, [], 0
        self.done = threading.Event()

    def scan(self) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read()
            except OSError:
                continue
            if any(n in argv for n in self.needles):
                self.hits.append((int(pid), argv.replace(b"\0", b" ")[:300]))
        self.scans += 1

    def run(self) -> None:
        while not self.done.is_set():
            self.scan()
            self.done.wait(0.05)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def _files_holding(base: Path, needles: List[bytes], skip: Path = None) -> List[str]:
    """Every file under ``base`` (raw bytes, so the msgpack journal too) that holds a needle."""
    found = []
    for dirpath, _, names in os.walk(base):
        for name in names:
            path = Path(dirpath, name)
            if path == skip or path.is_symlink():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(n in data for n in needles):
                found.append(str(path))
    return found


def _leak_drill(rgt: Callable[..., object], host: str, run_dir_of: Callable[[str], Path], code: Path,
                python: str, state_dir: Path) -> None:
    """The whole drill against one box; ``rgt(*args, extra_env=...)`` runs the console script."""
    tok1 = "rgt-leak-" + secrets.token_hex(16)
    tok2 = "rgt-leak-" + secrets.token_hex(16)
    needles = [tok1.encode(), tok2.encode()]
    outputs: List[str] = []
    # NAME=value typed by mistake is refused without echoing the value. (Before the scan starts: the
    # value is in that command's own argv, which is the user's doing.)
    for cmd in (["up", "local"], ["onstart"]):
        typed = rgt(*cmd, "--secret", f"LEAK_TOKEN={tok1}", "--", python, "train.py", extra_env={})
        assert typed.returncode == 2 and tok1 not in typed.stdout + typed.stderr, typed.stderr
    canary = "rgt-canary-" + secrets.token_hex(8)  # proves the scanner sees what it looks for
    scanner = ArgvScanner(needles + [canary.encode()])
    probe = subprocess.Popen(["sh", "-c", "sleep 600", canary])  # killed as soon as it is seen

    def canary_seen():
        scanner.scan()
        return any(canary.encode() in argv for _, argv in scanner.hits)

    wait_until(canary_seen, timeout_s=120, what="the argv scanner to see a canary process's argv")
    probe.kill()
    probe.wait()
    scanner.hits.clear()
    scanner.start()

    def call(*args: str, token: str = tok1, ok: bool = True):
        res = rgt(*args, extra_env={"LEAK_TOKEN": token})
        outputs.append(f"$ rgt {' '.join(args)}\n{res.stdout}\n{res.stderr}")
        if ok:
            assert res.returncode == 0, (args, res.stdout, res.stderr)
        return res

    try:
        run_id = f"leak-{secrets.token_hex(3)}"
        dry = call("up", host, "--run", run_id, "--secret", "LEAK_TOKEN", "--code", str(code), "--dry-run",
                   "--", python, "train.py")
        assert "***" in dry.stdout  # the dry run shows that a value exists, never the value
        script = call("onstart", "--profile", "vastai", "--run", run_id, "--secret", "LEAK_TOKEN", "--code", str(code),
                      "--", python, "train.py")
        assert "LEAK_TOKEN" in script.stdout

        call("up", host, "--run", run_id, "--secret", "LEAK_TOKEN", "--code", str(code), "--tick-s", "0.5",
             "--start-grace-s", "0", "--", python, "train.py")
        run_dir = run_dir_of(run_id)
        seen1 = wait_until(lambda: (run_dir / "code" / "seen.1").exists() and (run_dir / "code" / "seen.1").read_text(),
                           timeout_s=120, what="attempt 1 to record its token")
        assert seen1 == _sha(tok1)  # it reached the trainer
        secrets_env = run_dir / "secrets.env"
        assert stat.S_IMODE(secrets_env.stat().st_mode) == 0o600
        for args in (("status", run_id), ("status", "--json", run_id), ("logs", run_id), ("events", run_id),
                     ("runs",), ("runs", "--json")):
            call(*args)

        # A new value for the next attempt: the running trainer keeps its env, attempt 2 gets the new one.
        call("secrets", "push", run_id, token=tok2)
        assert load_secrets(str(secrets_env)) == {"LEAK_TOKEN": tok2}
        assert stat.S_IMODE(secrets_env.stat().st_mode) == 0o600
        assert not list(run_dir.glob("secrets.env.*"))  # no temp file left beside it
        (run_dir / "code" / "go").write_text("")
        call("wait", run_id)
        assert (run_dir / "code" / "seen.2").read_text() == _sha(tok2)
        call("status", run_id)
    finally:
        scanner.stop()
    scanner.scan()
    assert scanner.scans >= 5
    assert not scanner.hits, f"a secret was in a process's argv: {scanner.hits}"
    assert not _files_holding(run_dir, needles, skip=secrets_env), "a secret was written outside secrets.env"
    journal = (run_dir / "events.msgpack").read_bytes()
    assert journal and not any(n in journal for n in needles)
    assert not _files_holding(state_dir, needles), "a secret was written into the controller's state"
    leaked = [o.splitlines()[0] for o in outputs if tok1 in o or tok2 in o]
    assert not leaked, f"rgt printed a secret: {leaked}"


def test_a_secret_reaches_the_trainer_and_nothing_else_over_the_local_transport(env):
    (env.project / "train.py").write_text(TRAINER)

    _leak_drill(env.rgt, "local", env.run_dir, env.project, box_python(), env.state)


def test_a_secret_reaches_the_trainer_and_nothing_else_over_ssh(sshbox, rgt_state, tmp_path):
    from tests.sshbox import RGT

    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text(TRAINER)

    def rgt(*args: str, extra_env: Dict[str, str]):
        return subprocess.run([RGT, *args], capture_output=True, text=True, timeout=scaled(120), cwd=str(code),
                              env=dict(sshbox.env(rgt_state), **extra_env), check=False)

    _leak_drill(rgt, sshbox.alias, lambda rid: Path(sshbox.home, ".rgt", "runs", rid), code, "python3",
                Path(rgt_state))
