"""Renders a status.json's sentinels, GPUs and host compactly for `rgt status` on the laptop (nvitop-like)."""

from __future__ import annotations

from typing import Any

import click

_COLORS = {"warn": "yellow", "critical": "red"}
_BAD_THROTTLE = {"hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}


def _paint(text: str, level: str, color: bool) -> str:
    if not color or level not in _COLORS:
        return text
    return click.style(text, fg=_COLORS[level], bold=level == "critical")


def _gib(n: Any) -> str:
    return "?" if n is None else f"{n / (1 << 30):.1f}"


def _num(v: Any, fmt: str = "{:g}") -> str:
    return "?" if v is None else fmt.format(v)


def _gpu_line(gpu: dict, level: str) -> tuple[str, str]:
    head = f"GPU{gpu.get('index', '?')} {gpu.get('name') or '?'}"
    if gpu.get("lost"):
        return f"{head}  LOST (fell off the bus or needs a reset)", "critical"
    parts = [
        head,
        f"{_num(gpu.get('util_pct'), '{:.0f}')}%",
        f"{_gib(gpu.get('mem_used_bytes'))}/{_gib(gpu.get('mem_total_bytes'))} GiB",
        f"{_num(gpu.get('temp_c'), '{:.0f}')} C",
        f"{_num(gpu.get('power_w'), '{:.0f}')} W",
        f"SM {_num(gpu.get('sm_clock_mhz'))}/{_num(gpu.get('sm_clock_max_mhz'))} MHz",
    ]
    bad = [r for r in gpu.get("throttle_reasons") or [] if r in _BAD_THROTTLE]
    if bad:
        parts.append("throttled: " + ",".join(bad))
        level = level if level != "ok" else "warn"
    if gpu.get("xid_last") is not None:
        parts.append(f"Xid {gpu['xid_last']}")
    if gpu.get("ecc_uncorrected"):
        parts.append(f"ECC {gpu['ecc_uncorrected']}")
    return "  ".join(parts), level


def _host_line(host: dict) -> str:
    mem = f"mem {_gib(host.get('mem_used_bytes'))}/{_gib(host.get('mem_limit_bytes'))} GiB"
    extras = []
    if host.get("mem_peak_bytes") is not None:
        extras.append(f"peak {_gib(host['mem_peak_bytes'])} GiB")
    if host.get("oom_kills") is not None:
        extras.append(f"{host['oom_kills']} OOM kills")
    if extras:
        mem += f" ({', '.join(extras)})"
    disk = f"disk {_gib(host.get('disk_free_bytes'))} GiB free"
    if host.get("inodes_free") is not None:
        disk += f", {host['inodes_free']:,} inodes free"
    return f"host  {mem}  |  {disk}"


def _sentinel_text(s: dict) -> str:
    if s.get("message"):
        return s["message"]
    value, limit = s.get("value"), s.get("limit")
    if isinstance(value, float) and isinstance(limit, float) and value <= 1 and limit <= 1:
        return f"{value:.0%} (limit {limit:.0%})"
    return f"{value} (limit {limit})"


def render_health(status_dict: dict | None, color: bool) -> list[str]:
    """Lines for GPUs, host and the sentinels that are not ok; warn in yellow, critical in red."""
    st = status_dict or {}
    if not st:
        return []
    sentinels = [s for s in st.get("sentinels") or [] if isinstance(s, dict)]
    levels = {s.get("name"): s.get("level", "ok") for s in sentinels}
    lines = []
    gpus = st.get("gpus") or []
    for gpu in gpus:
        text, level = _gpu_line(gpu, levels.get(f"gpu{gpu.get('index')}", "ok"))
        lines.append(_paint(text, level, color))
    if not gpus:
        why = next((s.get("message") for s in sentinels if s.get("name") == "gpu" and s.get("message")), None)
        lines.append(f"GPU   none{': ' + why if why else ''}")
    host = st.get("host") or {}
    if any(v is not None for v in host.values()):
        lines.append(_paint(_host_line(host), levels.get("memory", "ok"), color))
    bad = [s for s in sentinels if s.get("level") in _COLORS]
    for s in sorted(bad, key=lambda s: s.get("level") != "critical"):
        lines.append(_paint(f"{s['level']:<8} {s.get('name')}: {_sentinel_text(s)}", s["level"], color))
    ok = len(sentinels) - len(bad)
    if sentinels:
        lines.append(f"sentinels: {ok} ok" + (f", {len(bad)} not" if bad else ""))
    return lines
