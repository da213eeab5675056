"""One click command per module; each exposes ``cli``. Shared option decorators live here."""

from __future__ import annotations

import click

run_argument = click.argument("run", required=False)
json_option = click.option("--json", "as_json", is_flag=True, help="Data on stdout as JSON; messages on stderr.")


def ssh_options(fn):
    """--port and --ssh-config (env RGT_SSH_CONFIG) for commands that take a HOST."""
    fn = click.option("--port", type=int, default=None, help="SSH port of HOST.")(fn)
    return click.option("--ssh-config", envvar="RGT_SSH_CONFIG", default=None, type=click.Path(dir_okay=False),
                        help="ssh_config file passed to ssh as -F.")(fn)
