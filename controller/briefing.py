"""First-contact briefing: a platform's conveniences and danger clocks, once per host (controller side)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rgt.shared.atomic import atomic_write_json

from .profiles import DangerClock, Profile, fact_groups, placeholders
from .state import state_dir

# How each clock's trigger reads in a sentence: one entry per profiles.CLOCK_STARTS (a test checks).
STARTS_WHEN_TEXT = {
    "started": "after the box or job starts",
    "stopped": "after the box is stopped",
    "always": "in every state",
    "balance_exhausted": "once the balance runs out",
    "destroyed": "after the box is destroyed",
    "os_shutdown": "after a shutdown from inside the box",
    "returned": "when the instance is returned",
    "snapshot": "when an env snapshot is saved",
    "gpu_idle": "when the GPU goes idle",
    "job_deleted": "after the job is deleted",
}


def format_duration(seconds: float) -> str:
    """15 days, 24 hours, 90 minutes, 30 s; 0 reads as "immediately" (whole units, rounded down)."""
    s = abs(seconds)
    if s == 0:
        return "immediately"
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= 2 * size:
            return f"{int(s // size)} {unit}"
    return f"{int(s)} s"


def clock_remaining(clock: DangerClock, started_at: float, now: float) -> float | None:
    """Seconds until ``clock`` fires, counted from when its trigger happened; negative once past.

    None when the clock has no fixed duration (it is a standing hazard, not a countdown).
    """
    if clock.duration_s is None:
        return None
    return started_at + clock.duration_s - now


def due_clocks(profile: Profile, event: str, started_at: float, now: float,
               lead_s: float = 86400.0) -> list[tuple[DangerClock, float]]:
    """Clocks started by ``event`` (e.g. "stopped") that fire within ``lead_s`` of ``now``, or have fired."""
    out = []
    for clock in profile.danger_clocks:
        if clock.starts_when != event:
            continue
        left = clock_remaining(clock, started_at, now)
        if left is not None and left <= lead_s:
            out.append((clock, left))
    return out


def clock_line(clock: DangerClock) -> str:
    """One line: when the clock starts, how long it runs, and what it does."""
    when = STARTS_WHEN_TEXT[clock.starts_when]
    if clock.duration_s is None:
        return f"{when}: {clock.message}"
    if clock.duration_s == 0:
        return f"immediately {when}: {clock.message}"
    return f"{format_duration(clock.duration_s)} {when}: {clock.message}"


def danger_summary(profile: Profile) -> str:
    """The short form printed by every `rgt up`: the danger clocks, one per line."""
    if not profile.danger_clocks:
        return f"{profile.display_name}: no danger clocks on record."
    lines = [f"{profile.display_name} danger clocks:"]
    lines += [f"  ! {clock_line(c)}" for c in profile.danger_clocks]
    return "\n".join(lines)


def _billing_lines(p: Profile) -> list[str]:
    b = p.billing
    verb = b.meter_stop_verb
    if verb == "none":
        lines = ["No meter to stop."]
    else:
        undo = "IRREVERSIBLE" if b.meter_stop_irreversible else "reversible"
        lines = [f"Stopping the meter: {verb} ({undo})."]
    if b.stop_verb is None and b.meter_stop_irreversible:
        lines.append(f"  No stop: {verb} is the only way to stop the meter, and it cannot be undone.")
    if b.stop_verb and b.keeps_billing_when_stopped:
        lines.append(f"  {b.stop_verb} does not stop all billing; still billing while stopped: "
                     + "; ".join(b.keeps_billing_when_stopped) + ".")
    if b.destroy_verb and b.destroy_verb != verb:
        lines.append(f"  {b.destroy_verb} deletes the box.")
    if b.keeps_billing_after_meter_stop:
        lines.append(f"  Still billing after {verb}: " + "; ".join(b.keeps_billing_after_meter_stop) + ".")
    lines += [f"  - {n}" for n in b.notes]
    return lines


def _storage_lines(p: Profile) -> list[str]:
    s, b = p.storage, p.billing
    lines = ["Where your work survives:"]
    if s.durable_dir:
        lines.append(f"  durable copies go to {s.durable_dir}/rgt/<run_id>")
    else:
        lines.append("  nothing on the box is durable: pull (rgt pull) before you tear it down")
    if s.durable_condition:
        lines.append(f"    ({s.durable_condition})")
    if b.stop_verb or s.survives_stop:
        kept = ", ".join(s.survives_stop) or "nothing on record"
        lines.append(f"  survives {b.stop_verb or 'a stop'}: {kept}")
    if b.meter_stop_verb != "none" or s.survives_destroy:
        destroy = b.destroy_verb or b.meter_stop_verb
        lines.append(f"  survives {destroy}: {', '.join(s.survives_destroy) or 'nothing on the box'}")
    if s.inode_cap is not None:
        lines.append(f"  inode cap: about {s.inode_cap} inodes on {s.inode_cap_dir or 'the data disk'}: "
                     "watch df -i, not only df -h")
    lines += [f"  - {n}" for n in s.notes]
    return lines


def _spot_line(p: Profile) -> str:
    sp = p.spot
    if not sp.available and sp.grace_s is None:
        return "Preemption: none (on-demand)."
    grace = "no grace" if sp.grace_s == 0 else f"{format_duration(sp.grace_s)} of grace" if sp.grace_s else ""
    signal = f"{sp.signal}, then SIGKILL" if sp.signal else "no signal"
    kind = "spot/interruptible" if sp.available else "preemption or walltime"
    return (f"Preemption ({kind}): {signal}, {grace}: rgt checkpoints on a timer; "
            "a signal asks the helper for one more save, never relied on.")


def _network_lines(p: Profile) -> list[str]:
    net = p.network
    lines = []
    if net.proxy is not None:
        how = f"sourced from {net.proxy.source}" if net.proxy.source else "fixed variables from the profile"
        scope = "" if net.proxy.stages is None else f", {'/'.join(net.proxy.stages)} stage only"
        todo = [x for x in placeholders(p) if x.startswith("network.")]
        todo_text = "; fill its placeholders first" if todo else ""
        lines.append(f"  proxy (trainer only{scope}): {how}{todo_text}")
    m = net.mirrors
    xet = " (Xet off)" if m.hf_disable_xet else ""
    mirrors = [f"pip {m.pip_index}" if m.pip_index else "",
               f"Hugging Face {m.hf_endpoint}{xet}" if m.hf_endpoint else ""]
    if any(mirrors):
        lines.append("  mirrors: " + ", ".join(x for x in mirrors if x))
    lines += [f"  - {n}" for n in net.notes]
    return ["Network:", *lines] if lines else []


def briefing(profile: Profile) -> str:
    """The first-contact text for a platform, built from its fields only."""
    p = profile
    lines = [f"== {p.display_name} (profile {p.name}) ==", p.summary, ""]
    if p.danger_clocks:
        lines.append("Danger clocks:")
        lines += [f"  ! {clock_line(c)}" for c in p.danger_clocks]
        lines.append("")
    lines += _billing_lines(p) + [""] + _storage_lines(p) + ["", _spot_line(p)] + _network_lines(p)
    if p.launch.conveniences:
        lines += ["", "Conveniences:"] + [f"  + {c}" for c in p.launch.conveniences]
    if p.launch.ssh_notes:
        lines += ["", "SSH:"] + [f"  - {n}" for n in p.launch.ssh_notes]
    oldest = min(v for _, v, _ in fact_groups(p))
    lines += ["", f"Facts verified {oldest} or later; re-check billing facts before betting money or data "
                  "(rgt profile check)."]
    return "\n".join(lines)


# --- seen hosts: the full briefing prints once per (host, profile) ---


def _seen_path() -> Path:
    return state_dir() / "seen-hosts.json"


def _read_seen() -> dict[str, dict[str, float]]:
    try:
        data = json.loads(_seen_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent or damaged: worst case a briefing prints twice
    hosts = data.get("hosts") if isinstance(data, dict) else None
    return hosts if isinstance(hosts, dict) else {}


def is_seen(host: str, profile_name: str) -> bool:
    """Whether this host was already briefed under this profile."""
    entry = _read_seen().get(host)
    return isinstance(entry, dict) and profile_name in entry


def mark_seen(host: str, profile_name: str, now: float | None = None) -> None:
    """Record the briefing for this host and profile (state file 0600 in a 0700 dir)."""
    hosts = _read_seen()
    entry = hosts.get(host) if isinstance(hosts.get(host), dict) else {}
    entry.setdefault(profile_name, time.time() if now is None else now)
    hosts[host] = entry
    atomic_write_json(str(_seen_path()), {"hosts": hosts}, mode=0o600)


def briefing_once(profile: Profile, host: str, force: bool = False, now: float | None = None) -> str | None:
    """The briefing on first contact with ``host`` under ``profile``, or always when ``force``; else None.

    Marks the host as seen, so the caller prints what it gets and nothing when it gets None.
    """
    if not force and is_seen(host, profile.name):
        return None
    mark_seen(host, profile.name, now)
    return briefing(profile)
