"""The secrets.env format (``NAME='value'`` lines, shell-quoted), written by the laptop, read on the box."""

from __future__ import annotations

import re
import shlex
from typing import Dict, Mapping

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_secrets(text: str) -> Dict[str, str]:
    """Parse secrets.env text; words that are not NAME=value are ignored.

    The whole text is split at once, so a quoted value may span lines (a PEM key, a JSON credential);
    a file that does not split (an unclosed quote) is read line by line instead.
    """
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return _parse_lines(text)
    return {n: v for n, sep, v in (w.partition("=") for w in words) if sep and NAME_RE.match(n)}


def _parse_lines(text: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if len(words) == 1 and "=" in words[0]:
            name, value = words[0].split("=", 1)
            if NAME_RE.match(name):
                out[name] = value
    return out


def format_secrets(values: Mapping[str, str]) -> str:
    """The inverse of parse_secrets."""
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in sorted(values.items()))


def load_secrets(path: str) -> Dict[str, str]:
    """Read secrets.env; a missing file means no secrets."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_secrets(f.read())
    except FileNotFoundError:
        return {}
