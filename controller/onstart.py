"""Renders the vast.ai onstart bootstrapper on the laptop: a small POSIX sh script with the spec inside, no secrets.

The script runs on every container start. It writes spec.json once, then relaunches the agent from the
archive that `rgt up` or `rgt push` left on the persistent disk; the agent adopts or resumes the run.
"""

from __future__ import annotations

import base64
import gzip
import re
import shlex
from dataclasses import dataclass
from typing import List, Optional, Sequence

from rgt.shared.errors import BadInput
from rgt.shared.secrets import NAME_RE
from rgt.shared.spec import RunSpec

# vast.ai keeps at most 16 KB of --onstart-cmd (docs.vast.ai/cli/commands, 2026-06).
ONSTART_LIMIT_BYTES = 16 * 1024
SPEC_END = "RGT_SPEC_END"
_SAFE_DQ = re.compile(r"[A-Za-z0-9_/.${}-]+\Z")  # may sit in "..." and still expand $VAR from the profile

# Runs under the probed Python: decodes the payload (plain JSON, or gzip+base64), stamps the first start
# as created_at (spend counts from there) and the interpreter as the trainer's python, then writes the
# file atomically. No single quotes here: the script passes it in '...'.
_WRITER = """import base64, gzip, json, os, sys, time
t = sys.stdin.read().strip()
d = json.loads(t if t.startswith("{") else gzip.decompress(base64.b64decode(t)).decode("utf-8"))
d["created_at"] = d.get("created_at") or time.time()
d["python"] = d.get("python") or sys.executable
q = sys.argv[1] + ".rgt-tmp"
with open(q, "w") as f:
    f.write(json.dumps(d, indent=1, sort_keys=True) + "\\n")
    f.flush()
    os.fsync(f.fileno())
os.replace(q, sys.argv[1])"""

_TEMPLATE = """#!/bin/sh
# rgt onstart for run {run_id} (profile {profile}, agent {sha12}): made by `rgt onstart`, re-run on every
# container start. It holds the run's spec and no secrets. It never fails the container: problems are
# printed here (the instance log) and it exits 0.
RUN_ID={q_run_id}
ROOT="${{RGT_ROOT:-}}"
[ -n "$ROOT" ] || ROOT={root_expr}
RUN="$ROOT/runs/$RUN_ID"
PYZ="$ROOT/agent/{sha12}.pyz"
say() {{ echo "rgt onstart [$RUN_ID]: $*"; }}
PY=
for p in {pythons}; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c "import sys; sys.exit(sys.version_info < (3, 8))" 2>/dev/null; then
    PY=$(command -v "$p"); break
  fi
done
if [ -z "$PY" ]; then say "no Python 3.8+ here (tried: {pythons_text}); the agent cannot start"; exit 0; fi
if ! mkdir -p "$RUN/code" "$RUN/logs"; then say "cannot create $RUN"; exit 0; fi
chmod 700 "$RUN"
if [ ! -f "$RUN/spec.json" ]; then
  "$PY" -I -c '{writer}' "$RUN/spec.json" <<'{end}' || {{ say "cannot write $RUN/spec.json"; exit 0; }}
{payload}
{end}
  say "wrote $RUN/spec.json"
fi
for m in DONE FAILED STOPPED; do
  if [ -e "$RUN/$m" ]; then
    say "the run already ended ($m): nothing to do (rgt resume continues FAILED or STOPPED)"; exit 0
  fi
done
if [ ! -f "$PYZ" ]; then
  say "agent archive $PYZ is not here; from your machine: rgt push HOST {push_hint}--run $RUN_ID --code DIR --start"
  exit 0
fi
{secrets_check}cd "$RUN" || exit 0
if command -v setsid >/dev/null 2>&1; then
  setsid nohup "$PY" -I "$PYZ" daemon "$RUN" >>"$RUN/logs/agent.out" 2>&1 </dev/null &
else
  nohup "$PY" -I "$PYZ" daemon "$RUN" >>"$RUN/logs/agent.out" 2>&1 </dev/null &
fi
say "agent launched (pid $!) under $PY; it adopts or resumes the run; log: $RUN/logs/agent.log"
exit 0
"""

_SECRETS_CHECK = """for n in {names}; do
  if ! grep -q "^$n=" "$RUN/secrets.env" 2>/dev/null && eval "[ -z \\"\\${{$n+x}}\\" ]"; then
    say "secret $n is in neither secrets.env nor the environment; send it with: rgt secrets push $RUN_ID"
  fi
done
"""


@dataclass
class Script:
    """The rendered bootstrapper and how the spec travels in it."""

    text: str
    encoding: str  # "json" or "gzip+base64"

    @property
    def size_bytes(self) -> int:
        """What vast.ai counts against its limit."""
        return len(self.text.encode("utf-8"))


def persistent_root(fast_dir: Optional[str], root: Optional[str] = None) -> Optional[str]:
    """$RGT_ROOT on the box for onstart and push: --root, else the profile's fast_dir plus /.rgt.

    None means the login's ~/.rgt. A fast_dir with a $VAR or a <placeholder> is left to that default,
    because push could not expand it the way the script's shell would.
    """
    if root:
        return root.rstrip("/") or "/"
    if fast_dir and "$" not in fast_dir and "<" not in fast_dir:
        return fast_dir.rstrip("/") + "/.rgt"
    return None


def _root_expr(root: Optional[str]) -> str:
    if root is None:
        return '"$HOME/.rgt"'
    return f'"{root}"' if _SAFE_DQ.match(root) else shlex.quote(root)


def _payload(spec_json: bytes, compress: bool) -> str:
    if not compress:
        return spec_json.decode("utf-8").rstrip("\n")
    raw = base64.b64encode(gzip.compress(spec_json, compresslevel=9, mtime=0)).decode("ascii")
    return "\n".join(raw[i:i + 76] for i in range(0, len(raw), 76))


def render(spec: RunSpec, sha12: str, profile: str, root: Optional[str], pythons: Sequence[str],
           compress: bool) -> Script:
    """The script text for one encoding of the spec (no size check)."""
    bad = [p for p in pythons if not p or p.startswith("-")]
    if bad or not pythons:
        raise BadInput(f"bad python candidate(s) {bad or list(pythons)}")
    names = list(spec.secret_names)
    for n in names:
        if "=" in n:  # NAME=value typed by mistake: never echo the value back
            raise BadInput(f"--secret takes a NAME, not NAME=value ({n.split('=', 1)[0]!r}; the value is not shown)")
        if not NAME_RE.match(n):
            raise BadInput(f"bad secret name {n!r}: use letters, digits and _")
    payload = _payload(spec.to_json(), compress)
    if any(line == SPEC_END for line in payload.splitlines()):  # cannot happen for JSON or base64
        raise BadInput("the spec cannot be embedded")
    checks = _SECRETS_CHECK.format(names=" ".join(names)) if names else ""
    text = _TEMPLATE.format(
        run_id=spec.run_id, q_run_id=shlex.quote(spec.run_id), profile=profile, sha12=sha12,
        root_expr=_root_expr(root), pythons=" ".join(shlex.quote(p) for p in pythons),
        pythons_text=" ".join(pythons).replace('"', "").replace("`", "").replace("$", ""),
        writer=_WRITER, end=SPEC_END, payload=payload, secrets_check=checks,
        push_hint=f"--profile {profile} " if re.fullmatch(r"[a-z0-9-]+", profile) else "",
    )
    return Script(text, "gzip+base64" if compress else "json")


def build(spec: RunSpec, sha12: str, profile: str, root: Optional[str], pythons: Sequence[str],
          limit_bytes: int = ONSTART_LIMIT_BYTES) -> Script:
    """The plain script when it fits, else the spec gzipped and base64-encoded; BadInput (exit 2) if neither fits."""
    if not re.fullmatch(r"[0-9a-f]{12}", sha12):
        raise BadInput(f"bad agent hash {sha12!r}")
    spec.validate()
    tried: List[Script] = []
    for compress in (False, True):
        script = render(spec, sha12, profile, root, pythons, compress)
        if script.size_bytes <= limit_bytes:
            return script
        tried.append(script)
    plain, packed = tried
    raise BadInput(
        f"the onstart script is {packed.size_bytes} bytes with the spec gzipped and base64-encoded "
        f"({plain.size_bytes} bytes plain), over vast.ai's limit of {limit_bytes} bytes: put the long "
        f"command line in a script inside your code (rgt push --code) and run that instead"
    )
