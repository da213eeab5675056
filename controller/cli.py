"""The `rgt` command line on the laptop: a lazy click group, one command per file, one abort path."""

from __future__ import annotations

import errno
import importlib
import os
import subprocess
import sys
from typing import Optional

import click

from rgt.shared.errors import RgtError

# name -> module under rgt.controller.commands; each module exposes `cli`. Imported on use, so that
# `rgt status` pays only for what it runs.
COMMANDS = {
    "up": "up", "status": "status", "wait": "wait", "logs": "logs", "stop": "stop", "runs": "runs",
    "resume": "resume", "events": "events", "demo": "demo", "doctor": "doctor",
    "profile": "profile", "reap": "reap",
    "attach": "attach",
    "pull": "pull", "verify": "verify", "down": "down",
    "onstart": "onstart", "push": "push", "secrets": "secrets",
    "sweep": "sweep",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list:
        """All command names, sorted."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        """Import the command's module on demand."""
        module = COMMANDS.get(name)
        if module is None:
            return None
        return importlib.import_module(f"rgt.controller.commands.{module}").cli


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="remote-gpu-trainer", prog_name="rgt")
@click.pass_context
def group(ctx: click.Context) -> None:
    """rgt: put training on a rented GPU box, keep it alive, bring the checkpoints home."""
    from .app import App

    ctx.obj = App()


def _message(exc: BaseException) -> tuple:
    """The one error table: (exit code, one line) for everything that is not a bug."""
    if isinstance(exc, RgtError):
        return exc.exit_code, str(exc)
    if isinstance(exc, subprocess.TimeoutExpired):
        return 3, f"timed out after {exc.timeout}s running {exc.cmd[0] if exc.cmd else 'a command'}"
    if isinstance(exc, PermissionError):
        return 1, f"permission denied: {exc.filename or exc}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return 1, f"no space left on this machine's disk ({exc.filename or 'writing'}); nothing was changed"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return 1, f"not found: {exc.filename}"
    return None, None


def main(argv: Optional[list] = None) -> None:
    """Console entry point: the single place that turns exceptions into one line and an exit code."""
    try:
        group.main(args=argv, prog_name="rgt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("rgt: aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("rgt: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # the CLI's policy point: no tracebacks for people, one line instead
        code, line = _message(e)
        if code is None:
            if os.environ.get("RGT_DEBUG"):
                raise
            code, line = 1, f"internal error: {type(e).__name__}: {e} (set RGT_DEBUG=1 for the traceback)"
        from .boundary import clean  # messages quote the box's words: no control sequence reaches the terminal

        click.echo(f"rgt: {clean(line)}", err=True)
        sys.exit(code)
    sys.exit(0)
