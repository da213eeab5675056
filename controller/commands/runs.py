"""`rgt runs [--json] [--refresh]`, `rgt runs park|unpark RUN` (laptop): known runs, spend, parked boxes' clocks."""

from __future__ import annotations

import datetime
import math
from typing import Any, Dict, List, Optional

import click

from . import json_option

TERMINAL = ("succeeded", "failed", "stopped")


def parked_at(rec: Any, profile: Any) -> Optional[Dict[str, Any]]:
    """When this run's box was stopped, per the registry; None when it is not parked.

    Parked means: `rgt runs park` said so, or `rgt down` cleared the run on a platform whose meter-stop
    verb is its plain stop (AutoDL's 关机), which leaves the box stopped with its clocks running. A
    destroyed box is gone: nothing to count down.
    """
    mark = (rec.extra or {}).get("parked")
    if isinstance(mark, dict) and isinstance(mark.get("at"), (int, float)):
        return {"at": float(mark["at"]), "by": mark.get("by") or "rgt runs park"}
    down = (rec.extra or {}).get("teardown")
    if not isinstance(down, dict) or down.get("state") != "cleared" or down.get("unparked") or profile is None:
        return None
    b = profile.billing
    if b.stop_verb and b.stop_verb == b.meter_stop_verb and isinstance(down.get("at"), (int, float)):
        return {"at": float(down["at"]), "by": f"rgt down ({b.stop_verb})"}
    return None


def stopped_clocks(profile: Any, at: float, now: float) -> List[Dict[str, Any]]:
    """The profile's clocks that start when the box is stopped: timed ones soonest first, then standing ones."""
    from rgt.controller.briefing import due_clocks

    timed = sorted(due_clocks(profile, "stopped", at, now, lead_s=math.inf), key=lambda cl: cl[1])
    out = [{"name": c.name, "remaining_s": round(left, 1), "fired": left <= 0, "message": c.message}
           for c, left in timed]
    out += [{"name": c.name, "remaining_s": None, "fired": None, "message": c.message}
            for c in profile.danger_clocks if c.starts_when == "stopped" and c.duration_s is None]
    return out


def _profile(name: str) -> Any:
    from rgt.controller.profiles import load_profile
    from rgt.shared.errors import RgtError

    try:
        return load_profile(name)
    except (RgtError, OSError, ValueError):
        return None


def _row(rec: Any, now: float) -> Dict[str, Any]:
    st = rec.last_status or {}
    cost = st.get("cost") or {}
    profile = _profile(rec.profile)
    park = parked_at(rec, profile)
    clocks = stopped_clocks(profile, park["at"], now) if park and profile is not None else []
    return {"run_id": rec.run_id, "host": rec.host, "profile": rec.profile, "run_dir": rec.run_dir,
            "state": st.get("state"), "last_seen_at": rec.last_seen_at, "usd_per_hour": cost.get("usd_per_hour"),
            "usd_so_far": cost.get("usd_so_far"), "parked": park, "clocks": clocks,
            "still_billing": list(profile.billing.keeps_billing_when_stopped) if park and profile else [],
            "display_name": profile.display_name if profile is not None else rec.profile}


def _ago(seconds: float) -> str:
    from rgt.controller.briefing import format_duration

    return "just now" if seconds < 1 else f"{format_duration(seconds)} ago"


def _clock_text(c: Dict[str, Any]) -> str:
    from rgt.controller.briefing import format_duration

    left = c["remaining_s"]
    if left is None:
        when = "for as long as it stays stopped"
    elif left <= 0:
        when = f"FIRED {format_duration(-left)} ago" if left < 0 else "FIRES NOW"
    else:
        when = f"in {format_duration(left)}" + ("  <-- within a day" if left <= 86400 else "")
    return f"{c['name']}: {when}: {c['message']}"


@click.group(invoke_without_command=True)
@json_option
@click.option("--refresh", is_flag=True, help="Read every run's status first (an unreachable box keeps its last).")
@click.pass_context
def cli(ctx, as_json, refresh) -> None:
    """List the runs this machine knows, their spend, and the danger clocks of parked (stopped) boxes."""
    if ctx.invoked_subcommand is not None:
        return
    from rgt.controller.profiles import now_s

    app = ctx.obj
    if refresh:
        _refresh(app)
    now = now_s()
    rows = [_row(r, now) for r in app.registry.all()]
    if as_json:
        app.data(rows)
        return
    if not rows:
        app.info("no runs yet: `rgt demo` or `rgt up local -- python train.py`")
        return
    from rgt.controller.boundary import clean

    total, rated = 0.0, False
    click.echo(f"{'RUN':32} {'HOST':20} {'STATE':10} {'SEEN':>8} {'USD/H':>6} {'USD':>8}")
    for r in rows:
        seen = f"{now - r['last_seen_at']:.0f}s" if r["last_seen_at"] else "-"
        usd, rate = r["usd_so_far"], r["usd_per_hour"]
        if usd is not None:
            total, rated = total + usd, True
        state = clean(r["state"] or "?", limit=20) + ("*" if r["parked"] else "")  # the box's word
        click.echo(f"{r['run_id']:32} {r['host'][:20]:20} {state:10} {seen:>8} "
                   f"{'-' if rate is None else f'{rate:.2f}':>6} {'-' if usd is None else f'{usd:.2f}':>8}")
    if rated:
        click.echo(f"{'total (as last seen)':>79} {total:8.2f}")
    parked = [r for r in rows if r["parked"]]
    if parked:
        click.echo("\n* parked: the box is stopped and its danger clocks run")
    for r in parked:
        p = r["parked"]
        ended = "" if r["state"] in TERMINAL else f"; last known state {clean(r['state'] or 'unknown')}, not ended"
        click.echo(f"  {r['run_id']} on {r['host']} ({r['display_name']}): stopped {_ago(now - p['at'])} "
                   f"by {p['by']}{ended}")
        if not r["clocks"]:
            click.echo("    no clocks on record that start when the box is stopped")
        for c in r["clocks"]:
            click.echo(f"    ! {_clock_text(c)}")
        if r["still_billing"]:
            click.echo(f"    still billing while stopped: {'; '.join(r['still_billing'])}")


def _refresh(app: Any) -> None:
    from rgt.controller.observe import poll, remember
    from rgt.shared.errors import RgtError

    for rec in app.registry.all():
        try:
            remember(app.registry, rec, poll(app.transport_of(rec), rec))
        except RgtError as e:
            app.info(f"{rec.run_id}: not refreshed ({e})")


def _parse_at(text: Optional[str], now: float) -> float:
    from rgt.shared.errors import BadInput

    if text is None:
        return now
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise BadInput(f"--at {text!r}: use unix seconds or YYYY-MM-DD[THH:MM] (local time)") from None


@cli.command("park")
@click.argument("run")
@click.option("--at", "at", default=None, help="When the box was stopped: unix seconds or YYYY-MM-DD[THH:MM]; "
                                              "default now.")
@click.pass_obj
def park(app, run, at) -> None:
    """Note that RUN's box is stopped (not destroyed), so `rgt runs` counts its danger clocks down."""
    from rgt.controller.profiles import now_s
    from rgt.shared.errors import BadInput

    rec = app.registry.get(run)
    when = _parse_at(at, now_s())
    if when > now_s() + 60:
        raise BadInput("--at is in the future")
    rec.extra = dict(rec.extra or {}, parked={"at": when, "by": "rgt runs park"})
    app.registry.save(rec)
    row = _row(rec, now_s())
    app.info(f"{rec.run_id}: parked since {datetime.datetime.fromtimestamp(when).isoformat(timespec='minutes')}")
    for c in row["clocks"]:
        app.info(f"  ! {_clock_text(c)}")


@cli.command("unpark")
@click.argument("run")
@click.pass_obj
def unpark(app, run) -> None:
    """Forget that RUN's box is stopped (it was started again, or destroyed)."""
    rec = app.registry.get(run)
    extra = dict(rec.extra or {})
    extra.pop("parked", None)
    if isinstance(extra.get("teardown"), dict):
        extra["teardown"] = dict(extra["teardown"], unparked=True)
    rec.extra = extra
    app.registry.save(rec)
    app.info(f"{rec.run_id}: not parked")
