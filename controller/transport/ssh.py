"""The SSH transport (laptop side): the OpenSSH client with a private ControlMaster, host keys always checked."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence

from rgt.shared.errors import BadInput, RgtError, TransportError

from ..state import state_dir
from .base import BoxResult, Transport

SUN_PATH_MAX = 108
# %C is a 40-hex sha1; while binding, ssh adds "." and 16 random characters to the name.
CONTROL_NAME_LEN = 40 + 17
CONTROL_PERSIST = "10m"
CONNECT_TIMEOUT_S = 10
SERVER_ALIVE_INTERVAL_S = 10
SERVER_ALIVE_COUNT_MAX = 3
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")

# The default box root: `.rgt` under the login's $HOME, whatever the profile; made absolute once.
RESOLVE_ROOT = 'cd -- "${HOME:-.}" 2>/dev/null; mkdir -p -- "$1" && cd -- "$1" && pwd'

# status.json and the box's clock in one round trip, with as few processes on the box as the raw
# `cat` needs plus one `date`: sh execs cat in place, and no $(...) subshell (about 4 ms less per poll).

CHANGED_MARKS = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed")
OFFENDING_RE = re.compile(r"Offending \S+ key in (.+):\d+")


def _ssh_path(path: str) -> str:
    """A path as an ssh -o value: ssh expands %-tokens and splits on blanks, so escape and quote."""
    if '"' in path:
        raise RgtError(f"rgt cannot hand ssh a path with a double quote in it: {path}")
    path = path.replace("%", "%%")
    return f'"{path}"' if any(c.isspace() for c in path) else path


def control_dir(state: Path) -> str:
    """A private dir for ControlMaster sockets, short enough for the 108-byte sun_path limit."""
    wanted = state / "cm"
    if len(os.fsencode(str(wanted))) + 1 + CONTROL_NAME_LEN < SUN_PATH_MAX:
        return _private_dir(wanted)
    return _private_dir(Path(f"/tmp/rgt-{os.getuid()}"))


def _private_dir(path: Path) -> str:
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    st = os.lstat(path)
    # Another user could have made the /tmp fallback first: a socket there would be theirs to hijack.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RgtError(f"{path} is not a private (0700) directory of this user: remove it, or set "
                       f"RGT_STATE_DIR to a short path of your own")
    return str(path)


class SSHTransport(Transport):
    """A box reached by `ssh HOST`: one shared connection per destination, reused across rgt commands."""

    def __init__(self, host: str, port: Optional[int] = None, ssh_config: Optional[str] = None,
                 root: Optional[str] = None, state: Optional[Path] = None) -> None:
        if not host or host.startswith("-"):
            raise BadInput(f"bad host {host!r}: a host may not start with '-'")
        self.host = host
        self.name = host
        self.port = port
        config = ssh_config or os.environ.get("RGT_SSH_CONFIG") or None
        # Absolute, so a later command from another directory finds the same file.
        self.ssh_config = os.path.abspath(os.path.expanduser(config)) if config else None
        self._root = root
        base = Path(state) if state is not None else state_dir()
        self.known_hosts = str(base / "known_hosts")
        self.control_dir = control_dir(base)
        if not os.path.exists(self.known_hosts):
            os.close(os.open(self.known_hosts, os.O_WRONLY | os.O_CREAT, 0o600))

    # -- the ssh command line -----------------------------------------------------------------------
    def ssh_base(self) -> List[str]:
        """`ssh` and every option, without the destination: shared by commands, rsync and the master."""
        argv = ["ssh"]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        if self.port:
            argv += ["-p", str(int(self.port))]
        known = " ".join([_ssh_path(self.known_hosts), *USER_KNOWN_HOSTS])
        for opt in (
            "ControlMaster=auto",
            f"ControlPath={_ssh_path(self.control_dir)}/%C",
            f"ControlPersist={CONTROL_PERSIST}",
            "BatchMode=yes",
            f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            f"ServerAliveInterval={SERVER_ALIVE_INTERVAL_S}",
            f"ServerAliveCountMax={SERVER_ALIVE_COUNT_MAX}",
            "StrictHostKeyChecking=accept-new",  # never "no": a changed key must stop us
            f"UserKnownHostsFile={known}",  # rgt's own file first: new keys are written there
            "LogLevel=ERROR",
            "RequestTTY=no",
            "RemoteCommand=none",
            "ClearAllForwardings=yes",
            "ForwardAgent=no",
            "ForwardX11=no",
            "PermitLocalCommand=no",
        ):
            argv += ["-o", opt]
        return argv

    def ssh_argv(self, argv: Sequence[str]) -> List[str]:
        """The full local command that runs ``argv`` on the box; the remote line is always shlex-joined."""
        return [*self.ssh_base(), "--", self.host, shlex.join(list(argv))]

    # -- Transport ----------------------------------------------------------------------------------
    @property
    def root(self) -> str:
        """$RGT_ROOT on the box: given (from the registry), or `~/.rgt` resolved once to an absolute path."""
        if self._root is None:
            res = self.sh(RESOLVE_ROOT, ".rgt")
            lines = res.out.decode(errors="replace").strip().splitlines()
            if res.rc != 0 or not lines or not lines[-1].startswith("/"):
                raise RgtError(f"cannot create ~/.rgt on {self.host}: "
                               f"{res.err.decode(errors='replace').strip()[:300]}")
            self._root = lines[-1]
        return self._root

    def run(self, argv: Sequence[str], input: Optional[bytes] = None,
            timeout_s: Optional[float] = 60.0) -> BoxResult:
        """Run argv on the box over the shared connection; TransportError when ssh itself failed."""
        try:
            p = subprocess.run(self.ssh_argv(argv), input=input, capture_output=True, timeout=timeout_s,
                               stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError:
            raise RgtError("the OpenSSH client (ssh) is not installed on this machine") from None
        except subprocess.TimeoutExpired:
            raise TransportError(f"transport unavailable: {self.host} did not answer within {timeout_s:.0f}s"
                                 ) from None
        if p.returncode == 255:
            raise self.error(p.stderr)
        return BoxResult(p.returncode, p.stdout, p.stderr)

    def popen(self, argv: Sequence[str]) -> subprocess.Popen:
        """Start argv on the box with stdout (and stderr) piped, for streaming."""
        try:
            return subprocess.Popen(self.ssh_argv(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise RgtError("the OpenSSH client (ssh) is not installed on this machine") from None

    def rsync_target(self, path: str) -> str:
        """The name rsync gives ``path`` on the box."""
        return f"{self.host}:{path}"

    def rsync_args(self) -> List[str]:
        """Make rsync go over the same ControlMaster connection, with the same host-key rules."""
        return ["-e", shlex.join(self.ssh_base())]

    # -- the control connection -----------------------------------------------------------------------
    def control(self, op: str) -> subprocess.CompletedProcess:
        """`ssh -O op` (check, exit, stop) on this destination's master."""
        return subprocess.run([*self.ssh_base(), "-O", op, "--", self.host], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=30, check=False)

    def resolved_config(self) -> dict:
        """What `ssh -G` makes of this destination (no connection): lower-case keys, first value wins."""
        try:
            p = subprocess.run([*self.ssh_base(), "-G", "--", self.host], capture_output=True,
                               stdin=subprocess.DEVNULL, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        conf: dict = {}
        for line in p.stdout.decode(errors="replace").splitlines():
            key, _, value = line.partition(" ")
            conf.setdefault(key, value)
        return conf

    def control_path(self) -> Optional[str]:
        """The master's socket path as ssh expands it, e.g. for `ssh -S PATH`."""
        return self.resolved_config().get("controlpath")

    def close(self) -> None:
        """Leave the master running: ControlPersist ends it, and the next rgt command reuses it."""

    # -- errors ---------------------------------------------------------------------------------------
    def error(self, stderr: bytes) -> TransportError:
        """The one-line TransportError for an ssh exit 255 with this stderr."""
        text = stderr.decode(errors="replace")
        if any(mark in text for mark in CHANGED_MARKS):
            return self._changed_key(text)
        lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("Warning: Permanently")]
        why = lines[-1] if lines else "ssh exited with 255"
        return TransportError(f"transport unavailable: {self.host}: {why}")

    def _changed_key(self, text: str) -> TransportError:
        m = OFFENDING_RE.search(text)
        where = m.group(1).strip() if m else self.known_hosts
        name = self._key_name()
        return TransportError(
            f"the host key of {self.host} ({name}) has CHANGED; rgt refused to connect and ran nothing. "
            f"If you re-created the rental (same IP and port, a new box with a new key) that is expected: "
            f"forget the old key with `ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(where)}` and "
            f"run the command again. If you did not, someone may be in the middle: do not go on."
        )

    def _key_name(self) -> str:
        """How known_hosts names this destination: HostKeyAlias, else host or [host]:port."""
        conf = self.resolved_config()
        if conf.get("hostkeyalias"):
            return conf["hostkeyalias"]
        host, port = conf.get("hostname", self.host), conf.get("port", "22")
        return host if port == "22" else f"[{host}]:{port}"
