"""Builds the agent's single-file zipapp on the laptop, reproducibly, and vendors its pure-Python deps."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib.util import find_spec
from pathlib import Path

from rgt.shared.atomic import atomic_write
from rgt.shared.errors import RgtError

# Pinned for the box's Python 3.8 floor: the newest releases of these need 3.10/3.11.
VENDOR_PINS = ("msgpack==1.1.1", "watchdog==4.0.2", "nvidia-ml-py==13.615.71")
VENDOR_TOP = ("msgpack", "watchdog", "pynvml.py")
FIXED_DATE = (1980, 1, 1, 0, 0, 0)

MAIN = b'''"""rgt agent archive: `python3 -I <sha12>.pyz {daemon,waiter,stop,status,manifest,doctor} RUN_DIR`."""
import os
import sys

sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), "rgt", "agent", "_vendor"))
from rgt.agent.cli import main  # noqa: E402

sys.exit(main())
'''


def _package_dir(name: str) -> Path:
    spec = find_spec(name)  # finds the folder without importing the agent's code
    if spec is None or not spec.submodule_search_locations:
        raise RgtError(f"cannot find the {name} package; reinstall with ./install.sh")
    return Path(list(spec.submodule_search_locations)[0])


def vendor_dir() -> Path:
    """Where the vendored deps live: agent/_vendor."""
    return _package_dir("rgt.agent") / "_vendor"


def _entries() -> list[tuple[str, bytes]]:
    files: list[tuple[str, bytes]] = [("__main__.py", MAIN), ("rgt/__init__.py", b'"""rgt."""\n')]
    vendor = vendor_dir()
    if not (vendor / "VENDOR.txt").exists():
        raise RgtError("the agent's vendored deps are missing (agent/_vendor): run ./install.sh")
    for pkg, prefix in (("rgt.agent", "rgt/agent"), ("rgt.shared", "rgt/shared")):
        base = _package_dir(pkg)
        for path in base.rglob("*"):
            rel = path.relative_to(base).as_posix()
            if "__pycache__" in rel or not path.is_file() or path.suffix in (".pyc", ".so"):
                continue
            files.append((f"{prefix}/{rel}", path.read_bytes()))
    return sorted(files)


def build_bytes() -> bytes:
    """The archive's bytes: sorted entries, fixed dates and modes, stored (zlib-version independent)."""
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in _entries():
            info = zipfile.ZipInfo(name, FIXED_DATE)
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, data)
    return buf.getvalue()


def build(out_dir: str) -> tuple[str, str]:
    """Build into ``out_dir`` as ``<sha12>.pyz`` unless already there; returns (path, sha12)."""
    data = build_bytes()
    sha12 = hashlib.sha256(data).hexdigest()[:12]
    path = os.path.join(out_dir, f"{sha12}.pyz")
    if not os.path.exists(path):
        os.makedirs(out_dir, exist_ok=True)
        atomic_write(path, data, 0o644)
    return path, sha12


# Run on the box in front of the archive, in the same round trip: hash the file against the sha256 its
# name promises, and run it only when they match; exit 97 (and a mark on stderr) says "send it again".
GUARD = (
    "import hashlib,runpy,sys\n"
    "p,w=sys.argv[1],sys.argv[2]\n"
    "h=hashlib.sha256()\n"
    "try:\n"
    " with open(p,'rb') as f:\n"
    "  for b in iter(lambda:f.read(1<<20),b''):h.update(b)\n"
    "except OSError:pass\n"
    "if h.hexdigest()!=w:sys.stderr.write('@@rgt-archive-mismatch '+p+'\\n');sys.exit(97)\n"
    "sys.argv=[p]+sys.argv[3:]\n"
    "runpy.run_path(p,run_name='__main__')\n"
)
MISMATCH_RC = 97
MISMATCH_MARK = b"@@rgt-archive-mismatch "


_BUILT: dict = {}


def local() -> tuple[str, str]:
    """(local path, full sha256) of this rgt's agent archive, built once per process and state dir."""
    out_dir = str(_state_dir() / "pyz")
    hit = _BUILT.get(out_dir)
    if hit is None or not os.path.exists(hit[0]):
        path, _sha12 = build(out_dir)
        with open(path, "rb") as f:
            hit = _BUILT[out_dir] = (path, hashlib.sha256(f.read()).hexdigest())
    return hit


def _state_dir() -> Path:
    from .state import state_dir

    return state_dir()


def remote_path(root: str, sha256: str) -> str:
    """Where the archive lives on the box: named after its hash."""
    return f"{root}/agent/{sha256[:12]}.pyz"


def guarded_argv(python: str, remote: str, sha256: str) -> list[str]:
    """Argv that runs the box's archive only if its bytes hash to ``sha256`` (else exit 97, nothing run)."""
    return [python, "-I", "-c", GUARD, remote, sha256]


def mismatched(rc: int, err: bytes) -> bool:
    """True when a guarded run refused the box's archive."""
    return rc == MISMATCH_RC and MISMATCH_MARK in err


def upload(transport, root: str) -> str:
    """Copy the archive to the box under a temp name, then rename it over the old one (atomic); its box path."""
    import secrets

    path, sha = local()
    remote = remote_path(root, sha)
    tmp = f"{remote}.rgt-up-{secrets.token_hex(4)}"
    transport.run(["mkdir", "-p", f"{root}/agent"])
    res = transport.rsync(["-t", "--whole-file", path, transport.rsync_target(tmp)])
    if res.returncode != 0:
        transport.run(["rm", "-f", "--", tmp])
        from .boundary import box_line

        raise RgtError(f"copying the agent to {transport.name} failed: {box_line(res.stderr, 300)}")
    moved = transport.run(["mv", "-f", "--", tmp, remote])
    if moved.rc != 0:
        transport.run(["rm", "-f", "--", tmp])
        raise RgtError(f"placing the agent archive on {transport.name} failed (disk full?): {remote}")
    return remote


def run_guarded(transport, root: str, python: str, args: list, timeout_s=300.0):
    """Run the box's archive with ``args`` behind the hash guard; a refused archive is sent again, once."""
    _path, sha = local()
    argv = [*guarded_argv(python, remote_path(root, sha), sha), *args]
    res = transport.run(argv, timeout_s=timeout_s)
    if mismatched(res.rc, res.err):
        upload(transport, root)
        res = transport.run(argv, timeout_s=timeout_s)
    return res


# The check alone, for callers that run the archive later themselves: one round trip, hash by the box's python.
CHECK = ('for p in "$1" python3 python; do if [ -n "$p" ] && command -v "$p" >/dev/null 2>&1; then '
         'exec "$p" -I -c "$2" "$3" "$4"; fi; done; exit 3')


def ensure(transport, root: str, python: str = "") -> str:
    """The archive's box path after hashing the box's copy (one round trip); replaced atomically if it differs."""
    _path, sha = local()
    remote = remote_path(root, sha)
    res = transport.sh(CHECK, python or "", GUARD_CHECK, remote, sha)
    if res.rc != 0:
        upload(transport, root)
    return remote


GUARD_CHECK = GUARD.replace("sys.argv=[p]+sys.argv[3:]\nrunpy.run_path(p,run_name='__main__')\n", "")


def vendor(force: bool = False) -> Path:
    """Fetch the pinned wheels with pip and keep only their pure-Python parts in agent/_vendor."""
    dest = vendor_dir()
    stamp = "\n".join(VENDOR_PINS) + "\n"
    if not force and (dest / "VENDOR.txt").exists() and (dest / "VENDOR.txt").read_text() == stamp:
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", tmp,
             *VENDOR_PINS],
            check=True,
        )
        stage = Path(tmp) / "stage"
        for wheel in sorted(Path(tmp).glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    top = name.split("/")[0]
                    if top in VENDOR_TOP and not name.endswith((".so", ".pyd", "/")):
                        zf.extract(name, stage)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(stage, dest)
    (dest / "__init__.py").write_text('"""Pure-Python deps bundled into the agent archive (see VENDOR.txt)."""\n')
    (dest / "VENDOR.txt").write_text(stamp)
    return dest


if __name__ == "__main__":
    if sys.argv[1:] == ["vendor"]:
        print(f"vendored into {vendor()}")
    elif sys.argv[1:2] == ["build"]:
        print(build(sys.argv[2] if len(sys.argv) > 2 else ".")[0])
    else:
        sys.exit("usage: python -m rgt.controller.pyz vendor|build [OUT_DIR]")
