"""Before `rgt up` launches (laptop): the script that `python FILE` or `python -m MOD` names is in the synced code.

Only the plain forms are checked; anything else (torchrun, bash -c, accelerate launch) is left to the
box, where a missing file is classified config_error and never retried.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple

from rgt.shared.errors import BadInput

PYTHON_NAME = re.compile(r"python(\d+(\.\d+)?)?\Z")
OPTS_WITH_VALUE = ("-W", "-X", "--check-hash-based-pycs")
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")

# Positional args: the code dir, then the candidates; exit 0 when any exists.
ANY_EXISTS = 'cd -- "$1" 2>/dev/null || exit 1; shift; for p in "$@"; do [ -e "$p" ] && exit 0; done; exit 1'


def target(command: List[str]) -> Optional[Tuple[str, str]]:
    """("file", path) or ("module", name) for `python [opts] FILE|-m MOD ...`, else None (nothing to check)."""
    if not command or not PYTHON_NAME.match(os.path.basename(command[0])):
        return None
    i = 1
    while i < len(command):
        arg = command[i]
        if arg == "-m":
            return ("module", command[i + 1]) if i + 1 < len(command) else None
        if arg.startswith("-m") and len(arg) > 2:
            return "module", arg[2:]
        if arg in ("-c", "-") or arg.startswith("-c"):
            return None  # inline code or stdin: no file to find
        if arg in OPTS_WITH_VALUE:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return "file", arg
    return None


def module_candidates(name: str) -> Tuple[List[str], List[str]]:
    """(the top-level package or module, the module itself) as paths relative to the code dir."""
    parts = name.split(".")
    top = [parts[0], parts[0] + ".py"]
    path = "/".join(parts)
    return top, [path + ".py", path + "/__init__.py", path + "/__main__.py", path]


def check(transport, code_path: str, command: List[str]) -> None:
    """Refuse (BadInput, exit 2) a script or local module that is absent from the synced code dir on the box.

    A module is refused only when its top-level package is in the code but the module is not; a top
    level that is not in the code may be installed on the box (``python -m torch.distributed.run``).
    """
    what = target(command)
    if what is None:
        return
    kind, name = what
    if kind == "file":
        if not _exists(transport, code_path, [name]):
            where = name if os.path.isabs(name) else f"{name} in the synced code ({code_path})"
            raise BadInput(f"the command runs {name!r}, but there is no {where}: check the name and the "
                           f"folder you ran `rgt up` from (--code), and that .gitignore does not exclude it")
        return
    if not MODULE_NAME.match(name):
        raise BadInput(f"`python -m {name}`: {name!r} is not a module name")
    top, mod = module_candidates(name)
    if "." in name and _exists(transport, code_path, top) and not _exists(transport, code_path, mod):
        raise BadInput(f"`python -m {name}`: the package {name.split('.')[0]!r} is in the synced code "
                       f"({code_path}) but {'/'.join(name.split('.'))}.py is not: check the module name")


def _exists(transport, code_path: str, candidates: List[str]) -> bool:
    return transport.sh(ANY_EXISTS, code_path, *candidates).rc == 0
