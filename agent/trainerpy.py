"""The trainer's python behind wrappers (on the box: the agent, and `rgt up`'s probe before a run starts).

`env A=1 python`, `sh -c 'cd x && python train.py'`, `bash -lc ...`, `torchrun`/`accelerate launch`/any
console script (its shebang names the python), `python -m ...`, `python3.11`, absolute and relative paths.
Checkpoints are verified under this python, so it must have torch: the probe says when it has not.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

_PYTHON = re.compile(r"^python(?:\d+(?:\.\d+)*)?(?:-dbg)?$")
_SHELLS = ("sh", "bash", "dash", "zsh", "ksh")
_PASS = ("exec", "nohup", "time", "command", "builtin", "xargs")  # run the rest of argv as it is
_KEYWORDS = {"if", "then", "else", "elif", "do", "while", "until", "{", "!"}
_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "\n"}
MAX_SCRIPT_BYTES = 64 * 1024
PROBE_TORCH = "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('torch') else 7)"


def is_python(word: str) -> bool:
    """True for python, python3, python3.11 (any directory)."""
    return bool(_PYTHON.match(os.path.basename(word)))


class _Finder:
    def __init__(self, path: Optional[str], cwd: Optional[str]) -> None:
        self.path, self.cwd, self.depth = path, cwd, 0

    def where(self, word: str) -> Optional[str]:
        """A command word as a file: relative to cwd when it has a slash, else on PATH."""
        if "/" in word:
            full = word if os.path.isabs(word) or not self.cwd else os.path.join(self.cwd, word)
            return full if os.path.isfile(full) else None
        return shutil.which(word, path=self.path)

    def shebang(self, exe: str) -> Optional[str]:
        """The python a console script (torchrun, accelerate, deepspeed, ...) runs under, from its first lines."""
        try:
            with open(exe, "rb") as f:
                head = f.read(1024).decode("utf-8", "replace").splitlines()
        except OSError:
            return None
        if not head or not head[0].startswith("#!"):
            return None
        words = head[0][2:].split()
        if words and os.path.basename(words[0]) == "env":
            words = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        if words and is_python(words[0]):
            return words[0] if "/" in words[0] else (shutil.which(words[0], path=self.path) or words[0])
        for line in head[1:4]:  # pip's launcher for long paths: #!/bin/sh, then '''exec' "/x/python" "$0" "$@"
            m = re.match(r"""^'''exec' "?([^"\s]+)"?""", line)
            if m and is_python(m.group(1)):
                return m.group(1)
        return None

    def argv(self, argv: Sequence[str]) -> Optional[str]:
        """The python an argv runs under, or None."""
        self.depth += 1
        if self.depth > 8 or not argv:
            return None
        words = list(argv)
        while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] in _KEYWORDS):
            words.pop(0)  # VAR=value before the command, or `then`/`do` in a shell line
        if not words:
            return None
        head = os.path.basename(words[0])
        if is_python(words[0]):
            return self.where(words[0]) or words[0]
        if head == "env":
            return self.argv(_after_env(words[1:]))
        if head in _PASS:
            return self.argv(words[1:])
        if head == "nice":
            rest = words[1:]
            if rest[:1] == ["-n"]:
                rest = rest[2:]
            elif rest and re.match(r"^-\d+$|^--adjustment=", rest[0]):
                rest = rest[1:]
            return self.argv(rest)
        if head in _SHELLS:
            return self.shell(words[1:])
        exe = self.where(words[0])
        return self.shebang(exe) if exe else None

    def shell(self, args: List[str]) -> Optional[str]:
        """`sh -c SCRIPT` (flags may be combined: -lc, -ec) or `sh script.sh`."""
        i = 0
        while i < len(args) and args[i].startswith("-") and "c" not in args[i][1:]:
            i += 1
        if i < len(args) and args[i].startswith("-"):
            return self.script(args[i + 1]) if i + 1 < len(args) else None
        if i < len(args):
            full = self.where(args[i]) if "/" in args[i] else (
                os.path.join(self.cwd, args[i]) if self.cwd else args[i])
            try:
                with open(full or args[i], "rb") as f:
                    return self.script(f.read(MAX_SCRIPT_BYTES).decode("utf-8", "replace"))
            except OSError:
                return None
        return None

    def script(self, text: str) -> Optional[str]:
        """The first simple command of a shell script that runs python (a console script if none does)."""
        try:
            lex = shlex.shlex(text, posix=True, punctuation_chars=";&|()\n")
            lex.whitespace = " \t\r"
            lex.commenters = "#"
            tokens = list(lex)
        except ValueError:
            return None
        commands, current = [], []
        for tok in tokens:
            if tok in _SEPARATORS or set(tok) <= set(";&|()\n"):
                commands.append(current)
                current = []
            else:
                current.append(tok)
        commands.append(current)
        saved = self.path
        fallback = None
        for cmd in filter(None, commands):
            if cmd[0] in ("source", ".") and len(cmd) > 1 and cmd[1].endswith("/activate"):
                bindir = os.path.dirname(cmd[1])  # `source .venv/bin/activate && python ...`
                bindir = bindir if os.path.isabs(bindir) or not self.cwd else os.path.join(self.cwd, bindir)
                self.path = os.pathsep.join(p for p in (bindir, self.path or os.environ.get("PATH")) if p)
                continue
            if cmd[0] in ("cd", "export", "echo", "set", "mkdir", "source", ".", "pip", "pip3"):
                continue
            found = self.argv(cmd)
            if found and any(is_python(w) for w in cmd[:4]):
                self.path = saved
                return found
            fallback = fallback or found
        self.path = saved
        return fallback


def _after_env(args: List[str]) -> List[str]:
    """`env [-i] [-u NAME] [-S 'words'] [NAME=value]... cmd`: the cmd part."""
    out = list(args)
    while out:
        w = out[0]
        if w in ("-u", "--unset", "-C", "--chdir"):
            out = out[2:]
        elif w in ("-S", "--split-string") and len(out) > 1:
            out = shlex.split(out[1]) + out[2:]
        elif w.startswith("-S") and len(w) > 2:
            out = shlex.split(w[2:]) + out[1:]
        elif w == "--":
            out = out[1:]
            break
        elif w.startswith("-") or "=" in w:
            out = out[1:]
        else:
            break
    return out


def find(argv: Sequence[str], path: Optional[str] = None, cwd: Optional[str] = None) -> Optional[str]:
    """The python ``argv`` runs under, resolved on ``path`` (and ``cwd`` for relative ones); None if none."""
    return _Finder(path, cwd).argv(argv)


def commands_of(spec_dict: Dict) -> List[List[str]]:
    """The argvs a spec runs: its command, or its cells' (a setup stage last: it may install pip, not train)."""
    if spec_dict.get("command"):
        return [list(spec_dict["command"])]
    cells = [c for c in spec_dict.get("cells") or [] if isinstance(c, dict) and c.get("command")]
    setup = [c for c in cells if c.get("name") == "setup"]
    return [list(c["command"]) for c in [c for c in cells if c not in setup] + setup]


def probe(spec_dict: Dict, cwd: Optional[str]) -> Dict:
    """Which python will verify checkpoints, how it was found, and whether it has torch (the laptop asks)."""
    explicit = (spec_dict.get("extra") or {}).get("verify_python")
    path = (spec_dict.get("env") or {}).get("PATH") or os.environ.get("PATH")
    python, how = None, "explicit" if explicit else "command"
    if explicit:
        python = _Finder(path, cwd).where(explicit)
        if python is None:
            return {"python": explicit, "how": how, "exists": False, "torch": None}
    else:
        for argv in commands_of(spec_dict):
            python = find(argv, path, cwd)
            if python:
                break
        if not python:
            python, how = spec_dict.get("python") or sys.executable, "agent"
    exists = os.path.isfile(python) or shutil.which(python, path=path) is not None
    torch = None
    if exists:
        try:
            rc = subprocess.run([python, "-c", PROBE_TORCH], cwd=cwd if cwd and os.path.isdir(cwd) else None,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                timeout=60).returncode
            torch = rc == 0
        except (OSError, subprocess.TimeoutExpired):
            exists = False
    return {"python": python, "how": how, "exists": exists, "torch": torch}


def probe_main() -> None:
    """`python -I -c ... ARCHIVE CODE_DIR` with the spec JSON on stdin: one JSON line on stdout."""
    spec_dict = json.loads(sys.stdin.read() or "{}")
    print(json.dumps(probe(spec_dict, sys.argv[2] if len(sys.argv) > 2 else None)))
