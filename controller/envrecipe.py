"""A profile as the trainer's env recipe for the run spec: mirrors, caches, proxy, thread caps (controller).

The recipe is data. ``env`` holds literal variables for ``spec.env``. ``platform_env`` holds what only the
box can finish; it goes to ``spec.extra["platform_env"]`` and agent/platform_env.py reads it:

- ``proxy``: ``{"source": "/etc/network_turbo"}`` and/or ``{"env": {...}}``, with ``"stages"`` (None: the
  whole run; a list: only those stages get the proxy) and ``"unset_after"`` (names removed from every
  other stage).
- ``no_proxy``: leading-dot domains merged into ``no_proxy`` and ``NO_PROXY`` whenever a proxy is set.
- ``thread_caps``: ``{"names": [...]}``: cap those variables from the box's cgroup CPU quota.
- ``env_expand``: variables whose values hold ``$VAR``, expanded on the box.
- ``hf_transfer_probe``: drop HF_HUB_ENABLE_HF_TRANSFER=1 when the trainer's python lacks hf_transfer.
- ``user_env``: names the user set in ``spec.env`` (added by ``apply_recipe``): the box never overrides them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from rgt.shared.errors import BadInput
from rgt.shared.spec import RunSpec

from .profiles import PLACEHOLDER_RE, Profile

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class EnvRecipe:
    """What a profile asks of the trainer's environment; ``notes`` say what was left out and why."""

    env: dict[str, str]
    platform_env: dict[str, Any]
    notes: tuple[str, ...] = ()

    @property
    def extra(self) -> dict[str, Any]:
        """The part for ``spec.extra``."""
        return {"platform_env": self.platform_env} if self.platform_env else {}


def thread_caps(cpu_quota: float | None) -> dict[str, str]:
    """OMP/MKL/OpenBLAS thread counts from a CPU quota in CPUs (1.5 -> 1); {} when there is no quota."""
    if cpu_quota is None:
        return {}
    if not cpu_quota > 0 or math.isinf(cpu_quota):
        raise BadInput(f"cpu quota must be a positive number of CPUs, got {cpu_quota!r}")
    n = max(1, int(math.floor(cpu_quota)))
    return {name: str(n) for name in THREAD_VARS}


def env_recipe(profile: Profile, cpu_quota: float | None = None) -> EnvRecipe:
    """Turn a profile into the trainer's env recipe. Pure: reads nothing but its arguments.

    ``cpu_quota`` is the box's cgroup CPU quota in CPUs when the controller has measured it; without it
    the agent reads the quota on the box.
    """
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
    extra: dict[str, Any] = {}
    notes: list[str] = []
    mirrors = profile.network.mirrors
    if mirrors.pip_index:
        env["PIP_INDEX_URL"] = mirrors.pip_index
    if mirrors.hf_endpoint:
        env["HF_ENDPOINT"] = mirrors.hf_endpoint
    if mirrors.hf_disable_xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    if mirrors.hf_transfer is not None:
        env["HF_HUB_ENABLE_HF_TRANSFER"] = "1" if mirrors.hf_transfer else "0"
        if mirrors.hf_transfer:
            extra["hf_transfer_probe"] = True
    expand: dict[str, str] = {}
    for name, value in (("HF_HOME", profile.storage.hf_home), ("TORCH_HOME", profile.storage.torch_home)):
        if not value:
            continue
        if PLACEHOLDER_RE.search(value):
            notes.append(f"{name} left unset: {value!r} has a placeholder to fill in your own profile")
        elif "$" in value:
            expand[name] = value
        else:
            env[name] = value
    if expand:
        extra["env_expand"] = expand
    proxy = _proxy_recipe(profile, notes)
    if proxy is not None:
        extra["proxy"] = proxy
    if profile.network.no_proxy:
        extra["no_proxy"] = list(profile.network.no_proxy)
    caps = thread_caps(cpu_quota)
    if caps:
        env.update(caps)
    else:
        extra["thread_caps"] = {"names": list(THREAD_VARS)}
    return EnvRecipe(env=env, platform_env=extra, notes=tuple(notes))


def _proxy_recipe(profile: Profile, notes: list[str]) -> dict[str, Any] | None:
    proxy = profile.network.proxy
    if proxy is None:
        return None
    fixed = dict(proxy.env)
    todo = [k for k, v in fixed.items() if PLACEHOLDER_RE.search(v)]
    if todo:
        notes.append(f"proxy left off: {', '.join(todo)} hold a placeholder such as <PORT>; "
                     f"set network.proxy.env in your own {profile.name} profile")
        return None
    recipe: dict[str, Any] = {"unset_after": list(proxy.unset_after)}
    if proxy.source:
        recipe["source"] = proxy.source
    if fixed:
        recipe["env"] = fixed
    recipe["stages"] = list(proxy.stages) if proxy.stages is not None else None
    return recipe


def apply_recipe(spec: RunSpec, recipe: EnvRecipe) -> RunSpec:
    """``spec`` with the recipe beneath it: variables the user set win, here and on the box."""
    extra = dict(spec.extra)
    if recipe.platform_env:
        extra["platform_env"] = {**recipe.platform_env, "user_env": sorted(spec.env)}
    return dataclasses.replace(spec, env={**recipe.env, **spec.env}, extra=extra)
