"""`rgt status [RUN] [--json] [--watch]` (laptop): one round trip for status.json and the box's clock."""

from __future__ import annotations

import sys
import time

import click

from . import json_option, run_argument


def render(rec, obs) -> list:
    """Human lines for one observation."""
    if obs.view == "unreachable":
        last = (obs.raw or {}).get("state", "unknown")
        return [f"{rec.run_id} on {rec.host}: transport unavailable ({obs.error}); last known state: {last}"]
    if obs.view == "no-status":
        return [f"{rec.run_id} on {rec.host}: no status.json yet (agent starting?)"]
    st = obs.status
    state = st.state if obs.view != "stale" else f"{st.state}, agent not responding"
    lines = [f"{rec.run_id} on {rec.host}: {state} (attempt {st.trainer.attempt}, {st.trainer.restarts} restarts), "
             f"heartbeat {obs.age_s:.1f}s ago"]
    p = st.progress
    if p.step is not None or p.loss is not None:
        of = f" of {p.total_steps}" if p.total_steps else ""
        loss = f"  loss {p.loss:.4g}" if p.loss is not None else ""
        lines.append(f"  step {p.step}{of}{loss}  ({p.source})")
    c = st.checkpoint
    if c.last_path:
        lines.append(f"  checkpoint {c.last_path} (step {c.last_step})")
    lf = st.trainer.last_failure
    if lf is not None and lf.class_:
        lines.append(f"  last failure: {lf.class_}: {lf.evidence}")
    try:
        from rgt.controller.render_sentinels import render_health
    except ImportError:
        render_health = None
    if render_health is not None:
        lines += ["  " + x for x in render_health(obs.raw, color=sys.stdout.isatty())]
    if st.next_action:
        lines.append(f"  next: {st.next_action}")
    return lines


def as_data(rec, obs) -> dict:
    """The status object plus the controller's view of it."""
    data = dict(obs.raw or {})
    data["controller"] = {"view": obs.view, "age_s": obs.age_s, "host": rec.host, "error": obs.error}
    return data


@click.command()
@run_argument
@json_option
@click.option("--watch", is_flag=True, help="Keep reading and redraw on every update.")
@click.pass_obj
def cli(app, run, as_json, watch) -> None:
    """Show a run's state; exit 3 when the box cannot be reached."""
    from rgt.controller.observe import poll, remember

    rec = app.resolve_run(run)
    transport = app.transport_of(rec)
    last_seq = None
    while True:
        obs = poll(transport, rec)
        remember(app.registry, rec, obs)
        seq = obs.status.seq if obs.status else None
        if seq != last_seq or not watch:
            if as_json:
                app.data(as_data(rec, obs))
            else:
                if watch and sys.stdout.isatty():
                    click.echo("\x1b[2J\x1b[H", nl=False)
                click.echo("\n".join(render(rec, obs)))
            last_seq = seq
        if obs.view == "unreachable":
            sys.exit(3)
        if not watch or (obs.status and obs.status.state in ("succeeded", "failed", "stopped")):
            return
        time.sleep(min(obs.status.tick_s if obs.status else 2.0, 2.0))
