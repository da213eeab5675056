"""The application object in click's ctx.obj (laptop side): registry, transports, run resolution, output."""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, Optional

import click

from rgt.shared.errors import BadInput
from rgt.shared.paths import validate_run_id

from .registry import Registry, RunRecord
from .state import local_box_root
from .transport.base import Transport


def check_host(host: str) -> str:
    """Refuse a HOST that ssh would read as an option."""
    if not host or host.startswith("-"):
        raise BadInput(f"bad host {host!r}: a host may not start with '-'")
    return host


class App:
    """Shared by every command through ``ctx.obj``."""

    def __init__(self) -> None:
        self.registry = Registry()
        self._transports: Dict[tuple, Transport] = {}

    # -- transports -------------------------------------------------------------------------------
    def transport_for(self, host: str, port: Optional[int] = None, ssh_config: Optional[str] = None,
                      root: Optional[str] = None) -> Transport:
        """The transport to ``host`` ("local" is this machine), cached per destination."""
        key = (host, port, ssh_config, root)
        if key not in self._transports:
            if host == "local":
                from .transport.local import LocalTransport

                self._transports[key] = LocalTransport(root or local_box_root())
            else:
                from .transport.ssh import SSHTransport

                self._transports[key] = SSHTransport(check_host(host), port=port, ssh_config=ssh_config,
                                                     root=root)
        return self._transports[key]

    def transport_of(self, rec: RunRecord) -> Transport:
        """The transport of a registered run."""
        return self.transport_for(rec.host, rec.port, rec.ssh_config, rec.root)

    # -- runs -------------------------------------------------------------------------------------
    def resolve_run(self, run: Optional[str]) -> RunRecord:
        """RUN omitted: the newest; ``HOST:RUN``: a run not in the registry; else the registry's."""
        if run is None:
            return self.registry.newest()
        if ":" in run:
            host, run_id = run.rsplit(":", 1)
            validate_run_id(run_id)
            try:
                rec = self.registry.get(run_id)
            except BadInput:
                rec = None
            if rec is not None and rec.host == host:
                return rec
            t = self.transport_for(check_host(host))
            return RunRecord(run_id=run_id, host=host, root=t.root)
        return self.registry.get(validate_run_id(run))

    # -- output -----------------------------------------------------------------------------------
    @staticmethod
    def info(message: str) -> None:
        """A message for a person: stderr, so --json stdout stays data; box words in it are cleaned."""
        from .boundary import clean

        click.echo(clean(message), err=True)

    @staticmethod
    def data(obj: Any) -> None:
        """Data on stdout."""
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()
