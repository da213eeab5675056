"""The local transport (laptop side): the box is a directory on this machine; argv runs as local processes."""

from __future__ import annotations

import os
import subprocess
from typing import List, Optional, Sequence

from rgt.shared.errors import TransportError

from .base import BoxResult, Transport


class LocalTransport(Transport):
    """`rgt up local`: the same box operations as over SSH, without the network."""

    def __init__(self, root: str) -> None:
        self.name = "local"
        self.root = root

    def run(self, argv: Sequence[str], input: Optional[bytes] = None, timeout_s: Optional[float] = 60.0) -> BoxResult:
        """Run argv here."""
        try:
            p = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout_s,
                               stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise TransportError(f"local command timed out after {timeout_s}s: {argv[0]}") from None
        return BoxResult(p.returncode, p.stdout, p.stderr)

    def _detach(self, argv: List[str], drop_env: Sequence[str]) -> BoxResult:
        """The agent starts from this process's environment minus the run's secrets."""
        env = {k: v for k, v in os.environ.items() if k not in set(drop_env)}
        p = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
        return BoxResult(p.returncode, p.stdout, p.stderr)

    def popen(self, argv: Sequence[str]) -> subprocess.Popen:
        """Start argv here with stdout piped."""
        return subprocess.Popen(list(argv), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)

    def rsync_target(self, path: str) -> str:
        """A local path is its own rsync name."""
        return path

    def rsync_args(self) -> List[str]:
        """No remote shell."""
        return []
