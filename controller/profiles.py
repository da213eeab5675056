"""Platform profiles (design section 10): packaged and user TOML facts as frozen dataclasses (controller)."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.resources
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgt.shared.errors import BadInput

from .profile_schema import Source, build, parse_toml

KINDS = ("ssh-rental", "cloud-api", "ssh", "slurm", "kubernetes", "workstation")
STATUS_APIS = ("vastai", "runpod", "lambda", "slurm", "kubernetes")
SCHEDULERS = ("slurm",)  # how `rgt up` starts the agent when not detached over SSH
CLOCK_STARTS = ("started", "stopped", "always", "balance_exhausted", "destroyed", "os_shutdown", "returned",
                "snapshot", "gpu_idle", "job_deleted")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}\Z")
STALE_AFTER_MONTHS = 6
PLACEHOLDER_RE = re.compile(r"<[A-Za-z_]+>")


def _f(default: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A dataclass field with validation rules (see profile_schema._check)."""
    return field(default=default, metadata=rules)


@dataclass(frozen=True)
class Launch:
    """How to reach the box, which python to probe, and the conveniences worth telling a newcomer."""

    verified: str = _f(month=True)
    source: str = _f()
    python: tuple[str, ...] = _f(("python3", "python"))
    ssh_user: str | None = None
    ssh_notes: tuple[str, ...] = ()
    status_api: str | None = _f(None, choices=STATUS_APIS)
    conveniences: tuple[str, ...] = ()
    scheduler: str | None = _f(None, choices=SCHEDULERS)  # None: setsid/nohup; "slurm": an sbatch job


@dataclass(frozen=True)
class Storage:
    """Where to write, what survives a stop and a destroy, inode caps, caches."""

    verified: str = _f(month=True)
    source: str = _f()
    fast_dir: str | None = _f(path=True)  # required; "" in the file means none (RGT_ROOT falls back)
    durable_dir: str | None = _f(path=True)  # required; "" means nothing on the box survives destroy
    durable_condition: str | None = None
    hf_home: str | None = _f(None, path=True)
    torch_home: str | None = _f(None, path=True)
    survives_stop: tuple[str, ...] = _f((), path=True)
    survives_destroy: tuple[str, ...] = _f((), path=True)
    inode_cap: int | None = _f(None, positive=True)
    inode_cap_dir: str | None = _f(None, path=True)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Billing:
    """The meter-stop verb, whether it can be undone, and what keeps billing."""

    verified: str = _f(month=True)
    source: str = _f()
    meter_stop_verb: str = _f()
    meter_stop_irreversible: bool = _f()
    stop_verb: str | None = None  # a reversible stop, where there is one
    destroy_verb: str | None = None
    keeps_billing_when_stopped: tuple[str, ...] = ()
    keeps_billing_after_meter_stop: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Spot:
    """Preemption: whether it exists and the SIGTERM-to-SIGKILL grace (None: not applicable)."""

    verified: str = _f(month=True)
    source: str = _f()
    available: bool = _f()
    grace_s: float | None = _f(None, nonneg=True)
    signal: str | None = _f(None, choices=("SIGTERM", "SIGINT", "SIGUSR1"))
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Proxy:
    """An egress proxy: a file to source on the box and/or fixed variables, maybe only for some stages."""

    source: str | None = _f(None, path=True)
    env: tuple[tuple[str, str], ...] = _f((), env_names=True)
    stages: tuple[str, ...] | None = None  # None: the whole run; else only these stages get the proxy
    unset_after: tuple[str, ...] = _f((), env_names=True)


@dataclass(frozen=True)
class Mirrors:
    """Package and model mirrors for the trainer."""

    pip_index: str | None = _f(None, url=True)
    hf_endpoint: str | None = _f(None, url=True)
    hf_disable_xet: bool = False  # Xet shards are not mirrored
    hf_transfer: bool | None = None  # None: leave HF_HUB_ENABLE_HF_TRANSFER alone


@dataclass(frozen=True)
class Network:
    """Proxy, mirrors and the no_proxy list (leading-dot domains)."""

    verified: str = _f(month=True)
    source: str = _f()
    proxy: Proxy | None = None
    mirrors: Mirrors = Mirrors()
    no_proxy: tuple[str, ...] = _f((), no_proxy=True)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DangerClock:
    """A platform timer that destroys data or money once started (duration None: no fixed length)."""

    name: str = _f(ident=True)
    starts_when: str = _f(choices=CLOCK_STARTS)
    message: str = _f()
    verified: str = _f(month=True)
    source: str = _f()
    duration_s: float | None = _f(None, nonneg=True)


@dataclass(frozen=True)
class Defaults:
    """rgt's own defaults for this platform (choices, not platform facts: no stamp)."""

    stop_grace_s: float = _f(30.0, positive=True)
    mtbf_s: float | None = _f(None, positive=True)
    usd_per_hour: float | None = _f(None, nonneg=True)


@dataclass(frozen=True)
class Profile:
    """One platform's facts. Behaviour elsewhere comes from these fields, never from ``name``."""

    name: str = _f(internal=True)
    display_name: str = _f()
    kind: str = _f(choices=KINDS)
    summary: str = _f()
    launch: Launch = _f()
    storage: Storage = _f()
    billing: Billing = _f()
    spot: Spot = _f()
    network: Network = _f()
    danger_clocks: tuple[DangerClock, ...] = ()
    defaults: Defaults = Defaults()
    files: tuple[str, ...] = _f((), internal=True)  # the TOML files merged into it, base first
    origin: str = _f("packaged", internal=True)  # "user" when a user file overrides or extends it

    @property
    def fast_dir(self) -> str | None:
        """Where RGT_ROOT goes by default (plus /.rgt)."""
        return self.storage.fast_dir

    @property
    def durable_dir(self) -> str | None:
        """Where verified checkpoints are copied when it exists and is another filesystem."""
        return self.storage.durable_dir

    @property
    def spot_grace_s(self) -> float | None:
        """SIGTERM-to-SIGKILL window on preemption; None when not applicable."""
        return self.spot.grace_s

    @property
    def python(self) -> tuple[str, ...]:
        """Interpreters to probe on the box, in order."""
        return self.launch.python

    @property
    def stop_grace_s(self) -> float:
        """The agent's stop deadline: SIGTERM, then SIGKILL after this."""
        return self.defaults.stop_grace_s


def user_profile_dir() -> Path:
    """RGT_CONFIG_DIR/profiles, else $XDG_CONFIG_HOME/rgt/profiles, else ~/.config/rgt/profiles."""
    if os.environ.get("RGT_CONFIG_DIR"):
        return Path(os.environ["RGT_CONFIG_DIR"]) / "profiles"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "rgt" / "profiles"


def profile_dirs() -> list[Any]:
    """Where profiles come from, lowest priority first: the packaged folder, then the user's."""
    return [importlib.resources.files("rgt.profiles"), user_profile_dir()]


def _files(folder: Any) -> dict[str, tuple[str, str]]:
    out = {}
    if not folder.is_dir():
        return out
    for entry in folder.iterdir():
        if entry.name.endswith(".toml") and not entry.name.startswith("."):
            stem = entry.name[:-5]
            if not NAME_RE.match(stem):
                raise BadInput(f"{entry}:1: (file name): profile names are 1-40 of a-z 0-9 -, got {stem!r}")
            out[stem] = (str(entry), entry.read_text(encoding="utf-8"))
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load(name: str, packaged: dict, user: dict) -> Profile:
    layers: list[tuple[str, str]] = []
    if name in user:
        label, text = user[name]
        ext = parse_toml(label, text).get("extends", name)
        if not isinstance(ext, str) or (ext not in packaged and ext != name):
            Source([user[name]]).fail(("extends",), f"expected the name of a packaged profile; got {ext!r}")
        layers = [packaged[ext]] if ext in packaged else []
        layers.append(user[name])
    elif name in packaged:
        layers = [packaged[name]]
    else:
        known = ", ".join(sorted(set(packaged) | set(user)))
        raise BadInput(f"no profile named {name!r}; known: {known}")
    src = Source(layers)
    merged: dict[str, Any] = {}
    for i, (label, text) in enumerate(layers):
        data = parse_toml(label, text)
        if i == len(layers) - 1 and name in user:
            data.pop("extends", None)
        if data.pop("name", name) != name:
            Source([(label, text)]).fail(("name",), f"must match the file name {name!r}")
        merged = _merge(merged, data)
    profile = build(Profile, merged, (), src, internal={"name": name, "files": tuple(lb for lb, _ in layers),
                                                "origin": "user" if name in user else "packaged"})
    proxy = profile.network.proxy
    if proxy is not None and not proxy.source and not proxy.env:
        # `source = ""` in a user file is how a packaged proxy is turned off
        profile = dataclasses.replace(profile, network=dataclasses.replace(profile.network, proxy=None))
    names = [c.name for c in profile.danger_clocks]
    for i, n in enumerate(names):
        if n in names[:i]:
            src.fail(("danger_clocks", i, "name"), f"duplicate clock name {n!r}")
    return profile


def load_profile(name: str) -> Profile:
    """The packaged profile ``name`` with the user's file of that name merged over it, or a user-only one."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadInput(f"bad profile name {name!r}: use 1-40 of a-z 0-9 -")
    return _load(name, _files(profile_dirs()[0]), _files(user_profile_dir()))


def list_profiles() -> list[Profile]:
    """Every profile, packaged and user, sorted by name."""
    packaged, user = _files(profile_dirs()[0]), _files(user_profile_dir())
    return [_load(n, packaged, user) for n in sorted(set(packaged) | set(user))]


def profile_names() -> list[str]:
    """Names of every profile without validating them (for `check`, which reports each error)."""
    return sorted(set(_files(profile_dirs()[0])) | set(_files(user_profile_dir())))


# --- staleness (design: re-check any teardown/billing fact before an irreversible action) ---


def now_s() -> float:
    """Unix seconds; env RGT_NOW (unix seconds, YYYY-MM-DD or YYYY-MM, UTC) fakes it for tests."""
    raw = os.environ.get("RGT_NOW", "").strip()
    if not raw:
        return time.time()
    try:
        return float(raw)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%d", "%Y-%m"):
        try:
            return datetime.datetime.strptime(raw, fmt).replace(tzinfo=datetime.timezone.utc).timestamp()
        except ValueError:
            continue
    raise BadInput(f"RGT_NOW={raw!r}: use unix seconds, YYYY-MM-DD or YYYY-MM")


def months_old(verified: str, now: float) -> int:
    """Whole calendar months between a ``YYYY-MM`` stamp and ``now``."""
    year, month = (int(x) for x in verified.split("-"))
    today = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    return (today.year * 12 + today.month) - (year * 12 + month)


@dataclass(frozen=True)
class StaleFact:
    """One fact group whose stamp is older than the threshold."""

    profile: str
    group: str
    verified: str
    source: str
    age_months: int


def fact_groups(p: Profile) -> list[tuple[str, str, str]]:
    """(group, verified, source) for every stamped group, danger clocks included."""
    groups = [(g, getattr(p, g).verified, getattr(p, g).source)
              for g in ("launch", "storage", "billing", "spot", "network")]
    return groups + [(f"danger_clocks.{c.name}", c.verified, c.source) for c in p.danger_clocks]


def stale_facts(p: Profile, now: float | None = None,
                max_age_months: int = STALE_AFTER_MONTHS) -> list[StaleFact]:
    """Groups verified more than ``max_age_months`` calendar months before ``now``."""
    now = now_s() if now is None else now
    out = []
    for group, verified, source in fact_groups(p):
        age = months_old(verified, now)
        if age > max_age_months:
            out.append(StaleFact(p.name, group, verified, source, age))
    return out


def irreversible_warnings(p: Profile, now: float | None = None,
                          max_age_months: int = STALE_AFTER_MONTHS) -> list[str]:
    """Warnings to show before running an irreversible meter-stop on stale billing or storage facts."""
    if not p.billing.meter_stop_irreversible:
        return []
    return [f"{p.name}: {p.billing.meter_stop_verb} is irreversible and its {s.group} facts were verified "
            f"{s.verified} ({s.age_months} months ago): re-check {s.source} before you run it"
            for s in stale_facts(p, now, max_age_months) if s.group in ("billing", "storage")]


def placeholders(p: Profile) -> list[str]:
    """Fields still holding a placeholder such as <name> that the user must fill in their own profile."""
    fields = {"storage.durable_dir": p.storage.durable_dir, "storage.hf_home": p.storage.hf_home,
              "storage.torch_home": p.storage.torch_home, "storage.fast_dir": p.storage.fast_dir}
    if p.network.proxy is not None:
        fields.update({f"network.proxy.env.{k}": v for k, v in p.network.proxy.env})
    return [f"{k} = {v!r}" for k, v in fields.items() if v and PLACEHOLDER_RE.search(v)]
