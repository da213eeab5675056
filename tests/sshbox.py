"""A real throwaway sshd on 127.0.0.1 for tests and benchmarks: its own host key, client key and ssh_config.

The box's login is a dedicated non-root user (`rgt-sshtest`, created once with useradd when we are
root) and root otherwise. Each SSHBox gets its own $HOME for that login through authorized_keys
`environment=` options (PermitUserEnvironment), so `~/.rgt` on the "box" is private to one test
session, and every process started over this sshd carries RGT_SSHBOX=<marker>, which is how the
box's processes are found and killed afterwards (never by name). A bin dir with `python` and
`python3` (symlinks to a Python 3.8+ the login can execute) goes first on the login's PATH.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import psutil

from tests.conftest import scaled

SSHD = "/usr/sbin/sshd"
TEST_USER = "rgt-sshtest"
RGT = str(Path(sys.executable).parent / "rgt")  # the console script of this venv
SFTP = "/usr/lib/openssh/sftp-server"


def sshd_available() -> bool:
    """True when openssh-server and the client are installed."""
    return os.path.exists(SSHD) and shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_test_user() -> Optional[str]:
    """The non-root login user, created when we are root and useradd works; None to log in as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            return None
        made = subprocess.run(["useradd", "-m", "-s", "/bin/sh", TEST_USER], capture_output=True, check=False)
        if made.returncode != 0 and b"already exists" not in made.stderr:
            return None
    # With UsePAM no, sshd refuses a locked ("!") account; "*" is unlocked but has no password.
    subprocess.run(["usermod", "-p", "*", TEST_USER], capture_output=True, check=False)
    return TEST_USER


def _can_run(user: Optional[str], python: str) -> bool:
    argv = [python, "-c", "import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)"]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    try:
        return subprocess.run(argv, capture_output=True, timeout=scaled(60), check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _python_candidates() -> List[str]:
    seen, out = set(), []
    names = [shutil.which("python3"), "/usr/bin/python3", "/usr/local/bin/python3",
             getattr(sys, "_base_executable", None), sys.executable]
    pyenv = Path(os.path.expanduser("~/.pyenv/versions"))
    if pyenv.is_dir():
        names += [str(p / "bin" / "python3") for p in sorted(pyenv.glob("3.*"), reverse=True)]
    for name in names:
        if name and os.path.exists(name):
            real = os.path.realpath(name)
            if real not in seen and os.path.basename(real).startswith("python3"):
                seen.add(real)
                out.append(real)
    return out


class SSHBox:
    """One sshd, started and stopped at will on a fixed port, with the files a client needs."""

    def __init__(self) -> None:
        self.user = _ensure_test_user()
        self.login = self.user or pwd.getpwuid(os.getuid()).pw_name
        self.marker = f"sshbox-{os.getpid()}-{secrets.token_hex(4)}"
        self.alias = f"rgt-box-{secrets.token_hex(3)}"
        # Under /tmp, not pytest's 0700 tmp dir: the login user must reach its $HOME here.
        self.dir = Path(tempfile.mkdtemp(prefix="rgt-sshbox-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        self.home = self.dir / "home"
        self.bin = self.dir / "bin"
        self.port = free_port()
        self.host_key = self.dir / "hostkey"
        self.client_key = self.dir / "clientkey"
        self.ssh_config = self.dir / "ssh_config"
        self.sshd_config = self.dir / "sshd_config"
        self.log = self.dir / "sshd.log"
        self._pid: Optional[int] = None
        self._pid_started: Optional[float] = None
        self._restore_mode: Optional[tuple] = None
        self._setup()

    # -- files ------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        self.home.mkdir(mode=0o755)
        self.bin.mkdir(mode=0o755)
        if self.user is not None:
            shutil.chown(self.home, self.user, self.user)
        self.new_host_key()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rgt-test-client",
                        "-f", str(self.client_key)], check=True)
        self.python = self._pick_python()
        for name in ("python3", "python"):
            os.symlink(self.python, self.bin / name)
        env = {"HOME": str(self.home), "RGT_SSHBOX": self.marker,
               "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin"}
        opts = ",".join(f'environment="{k}={v}"' for k, v in env.items())
        ak = self.dir / "authorized_keys"
        ak.write_text(f"{opts} {self.client_key.with_suffix('.pub').read_text().strip()}\n")
        os.chmod(ak, 0o644)  # sshd reads it as the login user
        self.sshd_config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {ak}", "PidFile none", "UsePAM no", "StrictModes no",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", "PermitUserEnvironment yes", "MaxStartups 50",
            "MaxSessions 50", f"Subsystem sftp {SFTP}", "",
        ]))
        # HostKeyAlias keeps this box's key out of any entry the user's known_hosts has for 127.0.0.1.
        self.ssh_config.write_text("\n".join([
            f"Host {self.alias}", "  HostName 127.0.0.1", f"  Port {self.port}", f"  User {self.login}",
            f"  IdentityFile {self.client_key}", "  IdentitiesOnly yes", f"  HostKeyAlias {self.alias}", "",
        ]))

    def new_host_key(self) -> None:
        """(Re)generate the host key: a re-created rental at the same address."""
        for p in (self.host_key, self.host_key.with_suffix(".pub")):
            if p.exists():
                p.unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)

    def _pick_python(self) -> str:
        """A Python 3.8+ the login can execute; /root is made traversable only if nothing else works."""
        candidates = _python_candidates()
        for py in candidates:
            if _can_run(self.user, py):
                return py
        if self.user is not None:
            root_home = os.path.expanduser("~")
            mode = stat.S_IMODE(os.stat(root_home).st_mode)
            for py in candidates:
                if py.startswith(root_home + "/"):
                    os.chmod(root_home, mode | 0o001)
                    self._restore_mode = (root_home, mode)
                    if _can_run(self.user, py):
                        return py
                    self._restore()
        raise RuntimeError(f"no Python 3.8+ that {self.login} can run (tried {candidates})")

    def _restore(self) -> None:
        if self._restore_mode is not None:
            os.chmod(*self._restore_mode)
            self._restore_mode = None

    # -- sshd -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start sshd detached (not our child: the per-test reaper must not take it) and wait for its banner."""
        try:
            os.makedirs("/run/sshd", exist_ok=True)  # else: "Missing privilege separation directory"
        except PermissionError:
            pass  # a non-root sshd does without it
        subprocess.run([SSHD, "-t", "-f", str(self.sshd_config)], check=True, capture_output=True)
        env = {k: v for k, v in os.environ.items() if k != "RGT_TEST_SESSION"}
        out = subprocess.run(
            ["setsid", "sh", "-c", '"$0" -D -e -f "$1" >>"$2" 2>&1 </dev/null & echo $!',
             SSHD, str(self.sshd_config), str(self.log)],
            env=env, capture_output=True, check=True, timeout=scaled(60))
        self._pid = int(out.stdout.split()[-1])
        self._pid_started = psutil.Process(self._pid).create_time()
        deadline = time.monotonic() + scaled(120)
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start on port {self.port}: {self.log.read_text()[-500:]}")

    def _sshd(self) -> Optional[psutil.Process]:
        if self._pid is None:
            return None
        try:
            p = psutil.Process(self._pid)
            return p if p.create_time() == self._pid_started else None
        except psutil.Error:
            return None

    @property
    def running(self) -> bool:
        """True while our sshd listens."""
        return self._sshd() is not None

    def stop(self) -> None:
        """Stop sshd and every connection it serves (the box goes dark); the box's own processes stay."""
        p = self._sshd()
        self._pid = None
        if p is None:
            return
        procs = [p, *p.children(recursive=True)]
        for q in procs:
            try:
                q.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)

    def restart(self) -> None:
        """Start sshd again on the same port."""
        self.stop()
        self.start()

    def accepted(self) -> int:
        """How many logins sshd accepted so far (each is one TCP connection)."""
        try:
            return self.log.read_text(errors="replace").count("Accepted publickey")
        except FileNotFoundError:
            return 0

    # -- the box's processes ------------------------------------------------------------------------------
    def box_processes(self) -> List[psutil.Process]:
        """Every process started over this sshd (agents, waiters, trainers), found by its RGT_SSHBOX marker."""
        out = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.environ().get("RGT_SSHBOX") == self.marker:
                    out.append(p)
            except (psutil.Error, OSError):
                continue
        return out

    def kill_box_processes(self) -> None:
        """SIGKILL what the box runs for us (tracked by marker), e.g. between tests."""
        procs = self.box_processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)

    def close(self) -> None:
        """Stop everything and remove the files."""
        self.kill_box_processes()
        self.stop()
        self._restore()
        shutil.rmtree(self.dir, ignore_errors=True)

    def env(self, state_dir: str) -> dict:
        """Environment for an `rgt` subprocess aimed at this box, with its own state dir."""
        env = dict(os.environ)
        env.update({"RGT_STATE_DIR": state_dir, "RGT_SSH_CONFIG": str(self.ssh_config)})
        env.pop("RGT_ROOT", None)
        return env
