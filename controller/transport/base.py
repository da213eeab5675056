"""The Transport seam (laptop side): run argv on the box, move files, and the box operations built on them."""

from __future__ import annotations

import math
import subprocess
from typing import List, NamedTuple, Optional, Sequence, Tuple

from rgt.shared.errors import RgtError

# Box-side snippets take their data as positional args ("$1"...), never pasted into the script.
# The clock first, then `exec cat`: one process fewer on the box per poll; cat's exit code is the answer's.
READ_WITH_CLOCK = 'date "+@@rgt-now %s.%N"; exec cat -- "$1" 2>/dev/null'
# The same with a byte cap, so a hostile box's 100 MB status.json never crosses the link whole.
READ_CAPPED_WITH_CLOCK = 'date "+@@rgt-now %s.%N"; exec head -c "$2" -- "$1" 2>/dev/null'
WRITE_STDIN = (
    'umask 077; { mkdir -p -- "$(dirname -- "$1")" && cat > "$1.rgt-tmp" && chmod "$2" "$1.rgt-tmp" '
    '&& mv -f -- "$1.rgt-tmp" "$1"; } || { rm -f -- "$1.rgt-tmp"; exit 1; }'
)
# The archive is hashed against its name in the same round trip that starts it ("$5" is the guard, "$6" the
# sha256 its name promises): a truncated or replaced copy exits 97 and nothing starts.
DETACH = (
    'cd -- "$1" && mkdir -p logs && { [ -z "$6" ] || "$2" -I -c "$5" "$3" "$6"; } || exit 97; '
    'setsid nohup "$2" -I "$3" daemon "$1" $4 >>"$1/logs/agent.out" 2>&1 </dev/null & echo $!'
)
FIND_PYTHON = (
    'for p in "$@"; do if command -v "$p" >/dev/null 2>&1; then '
    'if "$p" -c "import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)" 2>/dev/null; then '
    'command -v "$p"; "$p" -c "import sys; print(sys.version.split()[0])"; exit 0; fi; fi; done; exit 1'
)
CLOCK_LINE = b"@@rgt-now "


class BoxResult(NamedTuple):
    """What one command on the box gave back."""

    rc: int
    out: bytes
    err: bytes


class Transport:
    """A box. Subclasses say how argv runs there and how files move; the rest is shared."""

    name = "box"
    root = ""

    # -- what subclasses provide ------------------------------------------------------------------
    def run(self, argv: Sequence[str], input: Optional[bytes] = None, timeout_s: Optional[float] = 60.0) -> BoxResult:
        """Run argv on the box; TransportError when the box cannot be reached."""
        raise NotImplementedError

    def popen(self, argv: Sequence[str]) -> subprocess.Popen:
        """Start argv on the box with stdout piped, for streaming (logs -f, status --watch)."""
        raise NotImplementedError

    def rsync_target(self, path: str) -> str:
        """How rsync names ``path`` on the box."""
        raise NotImplementedError

    def rsync_args(self) -> List[str]:
        """Extra rsync args (the `-e ssh ...` of a remote box)."""
        return []

    def close(self) -> None:
        """Release shared connections, if any."""

    # -- shared box operations ----------------------------------------------------------------------
    def sh(self, script: str, *args: str, input: Optional[bytes] = None,
           timeout_s: Optional[float] = 60.0) -> BoxResult:
        """Run a fixed sh snippet with data passed as positional args."""
        return self.run(["sh", "-c", script, "sh", *args], input=input, timeout_s=timeout_s)

    def read_with_clock(self, path: str, max_bytes: Optional[int] = None) -> Tuple[Optional[bytes], float]:
        """A file's bytes (None when absent; at most ``max_bytes``) and the box's clock, in one round trip."""
        res = self.sh(READ_WITH_CLOCK, path) if max_bytes is None else self.sh(
            READ_CAPPED_WITH_CLOCK, path, str(int(max_bytes)))
        head, _, body = res.out.partition(b"\n")
        if not head.startswith(CLOCK_LINE):
            from rgt.controller.boundary import box_line

            why = box_line(res.err, 200)
            raise RgtError(f"unexpected answer from {self.name} while reading {path}: {why}")
        stamp = head[len(CLOCK_LINE):].decode(errors="replace").strip()
        try:
            now = float(stamp)
        except ValueError:  # a `date` without %N (old busybox): whole seconds will do
            try:
                now = float(stamp.split(".")[0])
            except ValueError:
                raise RgtError(f"unexpected clock from {self.name} while reading {path}") from None
        if not math.isfinite(now):
            raise RgtError(f"unexpected clock from {self.name} while reading {path}")
        return (body if res.rc == 0 else None), now

    def read_file(self, path: str, max_bytes: Optional[int] = None) -> Optional[bytes]:
        """A file's bytes (at most ``max_bytes``), or None when absent."""
        return self.read_with_clock(path, max_bytes)[0]

    def write_file(self, path: str, data: bytes, mode: str = "600") -> None:
        """Write through stdin (so secrets never reach argv), via a temp name and a rename."""
        res = self.sh(WRITE_STDIN, path, mode, input=data)
        if res.rc != 0:
            raise RgtError(f"cannot write {path} on {self.name}: {res.err.decode(errors='replace').strip()[:300]}")

    def exists(self, path: str) -> bool:
        """True when ``path`` exists on the box."""
        return self.run(["test", "-e", path]).rc == 0

    def find_python(self, candidates: Sequence[str]) -> Tuple[str, str]:
        """(path, version) of the first candidate that is Python 3.8+."""
        res = self.sh(FIND_PYTHON, *candidates)
        lines = res.out.decode().split()
        if res.rc != 0 or len(lines) < 2:
            raise RgtError(f"no Python 3.8+ on {self.name} (tried {', '.join(candidates)}); pass --python PATH")
        return lines[0], lines[1]

    def start_agent(self, run_dir: str, python: str, pyz: str, resume: bool = False,
                    drop_env: Sequence[str] = ()) -> int:
        """Start the agent detached (setsid, nohup); returns its pid.

        ``drop_env`` names variables the agent must not inherit (the run's secrets, on a local box:
        they reach the trainer through secrets.env only, as on a remote one).
        """
        from rgt.controller import pyz as archive

        _local, sha = archive.local()
        want = sha if pyz.endswith(f"/{sha[:12]}.pyz") else ""  # an archive rgt did not name: nothing to hold it to
        argv = ["sh", "-c", DETACH, "sh", run_dir, python, pyz, "--resume" if resume else "", archive.GUARD_CHECK,
                want]
        res = self._detach(argv, drop_env)
        if archive.mismatched(res.rc, res.err):
            archive.upload(self, pyz.rsplit("/agent/", 1)[0])
            res = self._detach(argv, drop_env)
        try:
            return int(res.out.decode().split()[-1])
        except (IndexError, ValueError):
            why = res.err.decode(errors="replace")[:300]
            raise RgtError(f"could not start the agent on {self.name}: {why}") from None

    def _detach(self, argv: List[str], drop_env: Sequence[str]) -> BoxResult:
        """Run the detaching snippet; a remote box never sees this machine's environment anyway."""
        del drop_env
        return self.run(argv)

    def run_agent(self, args: Sequence[str], timeout_s: Optional[float] = 300.0,
                  python: Optional[str] = None) -> BoxResult:
        """Run the agent archive on the box (copied there first if that hash is absent)."""
        from rgt.controller.pyz import run_guarded

        python = python or self.find_python(["python3", "python"])[0]
        return run_guarded(self, self.root, python, list(args), timeout_s=timeout_s)

    def rsync(self, args: Sequence[str], timeout_s: Optional[float] = None) -> subprocess.CompletedProcess:
        """Run the local rsync binary with this transport's remote shell; it dies with rgt (see rsyncrun)."""
        from rgt.controller.rsyncrun import run_plain

        return run_plain(["rsync", *self.rsync_args(), *args], timeout_s=timeout_s)
