"""The trainer's environment from the spec's platform recipe: proxy, no_proxy, caches, thread caps (box side).

The controller's envrecipe.py writes plain variables into ``spec.env`` and the parts only the box can
finish into ``spec.extra["platform_env"]``: ``proxy``, ``no_proxy``, ``thread_caps``, ``env_expand``,
``hf_transfer_probe``, ``user_env``. Nothing here touches the agent's own ``os.environ``: results are new
dicts for the trainer's ``Popen(env=...)``. ``root`` lets tests stand a temp dir in for ``/``.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
_CASE_PAIRS = (("http_proxy", "HTTP_PROXY"), ("https_proxy", "HTTPS_PROXY"), ("all_proxy", "ALL_PROXY"))
_SHELL_OWN = frozenset(("SHLVL", "PWD", "OLDPWD", "_"))
_NOT_PASSED = ("BASH_ENV", "ENV")  # a non-interactive bash would source these too
# The file and the interpreter arrive as positional arguments: nothing from the recipe is pasted into
# the script text. Only exported variables reach the child, as with `source` in a wrapper script.
_SOURCE_SCRIPT = '. "$1" >/dev/null 2>&1 </dev/null || exit 97; exec "$2" -I -c "$3"'
_DUMP_ENV = "import json, os, sys; sys.stdout.write(json.dumps(dict(os.environ)))"
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


class ProxySourceError(Exception):
    """Sourcing the platform's proxy file failed; the trainer then runs without that proxy."""


def box_path(root: str, path: str) -> str:
    """``path`` on the box as seen under ``root`` ("/" on a real box, a temp dir in tests)."""
    if not root or root == "/":
        return path
    return os.path.join(root, path.lstrip("/"))


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _own_cgroups(root: str) -> Dict[str, str]:
    """Controller name -> this process's cgroup path ("" is the v2 unified hierarchy)."""
    out = {}  # type: Dict[str, str]
    for line in (_read(box_path(root, "/proc/self/cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for ctrl in parts[1].split(",") if parts[1] else [""]:
                out[ctrl] = parts[2]
    return out


def _walk_up(base: str, rel: Optional[str]) -> List[str]:
    """``base/rel`` and each parent up to ``base``, those that exist (inside a container only base does)."""
    found = []
    rel = (rel or "").strip("/")
    while True:
        d = os.path.join(base, rel) if rel else base
        if os.path.isdir(d):
            found.append(d)
        if not rel:
            return found
        rel = os.path.dirname(rel)


def _ratio(quota: str, period: str) -> Optional[float]:
    try:
        q, p = float(quota), float(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def read_cpu_quota(root: str = "/") -> Optional[float]:
    """The tightest CPU quota (in CPUs) over this process's cgroup and its parents; None when unlimited.

    cgroup v2 reads ``cpu.max`` ("max 100000" or "150000 100000"); v1 reads ``cpu.cfs_quota_us`` (-1 is
    unlimited) over ``cpu.cfs_period_us``.
    """
    cg = box_path(root, "/sys/fs/cgroup")
    own = _own_cgroups(root)
    quotas = []
    if os.path.exists(os.path.join(cg, "cgroup.controllers")):
        for d in _walk_up(cg, own.get("")):
            parts = (_read(os.path.join(d, "cpu.max")) or "").split()
            if len(parts) == 2 and parts[0] != "max":
                quotas.append(_ratio(parts[0], parts[1]))
    else:
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            base = os.path.join(cg, mount)
            if not os.path.isdir(base):
                continue
            for d in _walk_up(base, own.get("cpu")):
                quota = _read(os.path.join(d, "cpu.cfs_quota_us"))
                period = _read(os.path.join(d, "cpu.cfs_period_us"))
                if quota and period:
                    quotas.append(_ratio(quota, period))
            break
    real = [q for q in quotas if q is not None]
    return min(real) if real else None


def thread_caps(cpus: Optional[float]) -> Dict[str, str]:
    """OMP/MKL/OpenBLAS thread counts for a quota in CPUs (2.5 -> 2, at least 1); {} without a quota."""
    if cpus is None or not cpus > 0 or math.isinf(cpus):
        return {}
    n = max(1, int(math.floor(cpus)))
    return {name: str(n) for name in THREAD_VARS}


def source_proxy(path: str, env: Mapping[str, str], timeout_s: float = 20.0) -> Dict[str, str]:
    """The variables that sourcing ``path`` in bash sets or changes, starting from ``env``."""
    clean = {k: v for k, v in env.items() if k not in _NOT_PASSED}
    argv = ["bash", "--noprofile", "--norc", "-c", _SOURCE_SCRIPT, "rgt-proxy", path,
            sys.executable or "python3", _DUMP_ENV]
    try:
        proc = subprocess.Popen(argv, env=clean, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        raise ProxySourceError(f"could not source {path}: {e}") from None
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # Its own session, made just now: the group holds only the file's shell and whatever it started.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        raise ProxySourceError(f"could not source {path}: no answer in {timeout_s:g} s") from None
    if proc.returncode != 0:
        raise ProxySourceError(f"sourcing {path} failed (exit {proc.returncode})")
    try:
        after = json.loads(out.decode("utf-8"))
    except ValueError:
        raise ProxySourceError(f"sourcing {path} gave no readable environment") from None
    return {k: v for k, v in after.items() if k not in _SHELL_OWN and clean.get(k) != v}


def merge_no_proxy(env: Dict[str, str], domains: List[str]) -> None:
    """Add ``domains`` to no_proxy and NO_PROXY (both casings, same value, existing entries first)."""
    seen = []  # type: List[str]
    for raw in (env.get("no_proxy", ""), env.get("NO_PROXY", ""), ",".join(domains)):
        for item in raw.split(","):
            item = item.strip()
            if item and item not in seen:
                seen.append(item)
    env["no_proxy"] = env["NO_PROXY"] = ",".join(seen)


def expand_vars(value: str, env: Mapping[str, str]) -> Optional[str]:
    """``$VAR`` and ``${VAR}`` from ``env``; None when one is unset (a literal "$USER" dir helps nobody)."""
    missing = [m.group(1) or m.group(2) for m in _VAR.finditer(value) if (m.group(1) or m.group(2)) not in env]
    if missing:
        return None
    return _VAR.sub(lambda m: env[m.group(1) or m.group(2)], value)


def hf_transfer_usable(python: str, timeout_s: float = 30.0) -> bool:
    """Whether the trainer's python can import hf_transfer (HF_HUB_ENABLE_HF_TRANSFER=1 fails without it)."""
    try:
        proc = subprocess.run([python, "-c", "import hf_transfer"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _apply_proxy(env: Dict[str, str], proxy: Mapping[str, Any], root: str, stage: Optional[str],
                 keep: Mapping[str, str], notes: List[str]) -> None:
    stages = proxy.get("stages")
    if stages is not None and stage not in stages:
        # A whitelist proxy (Gpushare's turbo) breaks every other host: outside its stages it is unset.
        for name in proxy.get("unset_after") or []:
            if name not in keep:
                env.pop(name, None)
        return
    found = {}  # type: Dict[str, str]
    source = proxy.get("source")
    if source:
        path = box_path(root, source)
        if os.path.isfile(path):
            try:
                found.update(source_proxy(path, env))
            except ProxySourceError as e:
                notes.append(f"{e}: the trainer runs without it")
        else:
            notes.append(f"proxy file {source} is absent: the trainer runs without a proxy")
    found.update(proxy.get("env") or {})
    for low, up in _CASE_PAIRS:
        if low in found and up not in found:
            found[up] = found[low]
    for name, value in found.items():
        if name not in keep:  # the user's own spec.env wins
            env[name] = value


def trainer_env(spec_env: Optional[Mapping[str, str]], recipe: Optional[Mapping[str, Any]] = None,
                root: str = "/", stage: Optional[str] = None, base_env: Optional[Mapping[str, str]] = None,
                python: Optional[str] = None, notes: Optional[List[str]] = None) -> Dict[str, str]:
    """The trainer's full environment: ``base_env`` (default: the agent's), ``spec_env``, then the recipe.

    ``recipe`` is ``spec.extra["platform_env"]``.
    ``stage`` names the stage being started (None for a single command); ``python`` is the trainer's
    interpreter, used to probe hf_transfer. Variables the user set (``spec_env`` keys and the recipe's
    ``user_env``) are never overridden. Remarks for a person (a missing proxy file, a variable left
    unset) are appended to ``notes``.
    """
    notes = [] if notes is None else notes
    recipe = recipe or {}
    env = dict(os.environ if base_env is None else base_env)
    env.update(spec_env or {})
    keep = {name: env.get(name, "") for name in list(spec_env or {}) + list(recipe.get("user_env") or [])}
    for name, value in (recipe.get("env_expand") or {}).items():
        if name in keep:
            continue
        expanded = expand_vars(value, env)
        if expanded is None:
            notes.append(f"{name} left unset: {value!r} names an unset variable")
        else:
            env[name] = expanded
    if recipe.get("proxy"):
        _apply_proxy(env, recipe["proxy"], root, stage, keep, notes)
    if recipe.get("no_proxy") and any(env.get(v) for v in PROXY_VARS):
        merge_no_proxy(env, list(recipe["no_proxy"]))
    caps = recipe.get("thread_caps")
    if isinstance(caps, dict):  # {} means the default names
        names = caps.get("names") or THREAD_VARS
        for name, value in thread_caps(read_cpu_quota(root)).items():
            if name in names and name not in keep:
                env[name] = value
    if (recipe.get("hf_transfer_probe") and env.get("HF_HUB_ENABLE_HF_TRANSFER") == "1" and python
            and not hf_transfer_usable(python)):
        env["HF_HUB_ENABLE_HF_TRANSFER"] = "0"
        notes.append("HF_HUB_ENABLE_HF_TRANSFER set to 0: the trainer's python has no hf_transfer")
    return env


def trainer_env_from_recipe(recipe: Mapping[str, Any], spec_env: Optional[Mapping[str, str]] = None,
                            base_env: Optional[Mapping[str, str]] = None, root: str = "/",
                            stage: Optional[str] = None, python: Optional[str] = None,
                            notes: Optional[List[str]] = None) -> Dict[str, str]:
    """Only the variables the recipe sets or changes, for ``env.update(...)`` over base plus spec env.

    It cannot express a removal: use trainer_env() where a stage-scoped proxy must be unset.
    """
    start = dict(os.environ if base_env is None else base_env)
    start.update(spec_env or {})
    full = trainer_env(spec_env, recipe, root=root, stage=stage, base_env=start, python=python, notes=notes)
    return {k: v for k, v in full.items() if start.get(k) != v}
