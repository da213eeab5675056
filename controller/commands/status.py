"""`rgt status [RUN] [--json] [--watch]` (laptop): one round trip for status.json and the box's clock."""

from __future__ import annotations

import sys

import click

from . import json_option, run_argument


def render(rec, obs) -> list:
    """Human lines for one observation."""
    if obs.view == "unreachable":
        last = (obs.raw or {}).get("state", "unknown")
        why = (obs.error or "").removeprefix("transport unavailable: ")
        return [f"{rec.run_id} on {rec.host}: transport unavailable ({why}); last known state: {last}"]
    if obs.view == "no-status":
        return [f"{rec.run_id} on {rec.host}: no status.json yet (agent starting?)"]
    st = obs.status
    state = st.state if obs.view != "stale" else f"{st.state}, agent not responding"
    lines = [f"{rec.run_id} on {rec.host}: {state} (attempt {st.trainer.attempt}, {st.trainer.restarts} restarts), "
             f"heartbeat {obs.age_s:.1f}s ago"]
    progress = progress_line(st.progress)
    if progress:
        lines.append(f"  {progress}")
    c = st.checkpoint
    lines += checkpoint_lines(c)
    if c.last_path and c.last_checks and c.last_checks != "verified":
        from rgt.controller.boundary import box_line

        lines.append("    " + box_line(c.last_checks, 300))
    if c.watch_dirs:
        from rgt.controller.boundary import box_line

        lines.append("  checkpoints looked for in " + box_line(", ".join(c.watch_dirs[:8]), 400))
    if c.pruned_count:
        from rgt.controller.boundary import box_line

        lines.append(f"  rgt pruned {c.pruned_count} checkpoint(s); last: {box_line(c.last_pruned or '?', 300)}")
    lf = st.trainer.last_failure
    if lf is not None and lf.class_:
        lines.append(f"  last failure: {lf.class_}: {lf.evidence}")
    try:
        from rgt.controller.render_sentinels import render_health
    except ImportError:
        render_health = None
    if render_health is not None:
        from rgt.controller.boundary import shown  # the box's strings cleaned; the colours are ours

        lines += ["  " + x for x in render_health(shown(obs.raw), color=sys.stdout.isatty())]
    if st.next_action:
        lines.append(f"  next: {st.next_action}")
    return lines


def checkpoint_lines(c) -> list:
    """The newest verified checkpoint, the resume target, and a loud line for each one that is no target."""
    from rgt.controller.boundary import box_line

    warnings = [w for w in (getattr(c, "warnings", None) or []) if isinstance(w, str)]
    if not warnings and isinstance(c.warning, str):
        warnings = [c.warning]
    lines = []
    if c.last_path or c.resume_from:
        newest = f"{box_line(c.last_path, 300)} (step {c.last_step})" if c.last_path else "none"
        target = box_line(c.resume_from, 300) if c.resume_from else "none (a restart starts from scratch)"
        lines.append(f"  checkpoint: newest verified {newest}; resume target {target}")
    elif warnings:
        lines.append("  checkpoint: none verified; no resume target")
    lines += [f"  WARNING checkpoint {box_line(w, 400)}" for w in warnings[:8]]
    return lines


def _int(v):
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def progress_line(p) -> str:
    """"step 120 of 1000  loss 2.31  (log)", or "epoch 2 batch 7  loss 0.5", or "loss nan"; "" when nothing.

    Every part is optional and none prints None: a trainer may show a loss before any step.
    """
    metrics = p.metrics if isinstance(p.metrics, dict) else {}
    parts = []
    step, total = _int(p.step), _int(p.total_steps)
    if step is not None:
        parts.append(f"step {step}" + (f" of {total}" if total else ""))
    elif _int(metrics.get("epoch")) is not None and _int(metrics.get("batch")) is not None:
        parts.append(f"epoch {metrics['epoch']} batch {metrics['batch']}")
    if isinstance(p.loss, (int, float)) and not isinstance(p.loss, bool):
        parts.append(f"loss {p.loss:.4g}")
    elif metrics.get("nonfinite_loss") in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity", "non-finite"):
        parts.append(f"loss {metrics['nonfinite_loss']}")
    if not parts:
        return ""
    source = f"  ({p.source})" if p.source in ("log", "helper") else ""
    return "  ".join(parts) + source


def as_data(rec, obs) -> dict:
    """The status object plus the controller's view of it."""
    data = dict(obs.raw or {})
    data["controller"] = {"view": obs.view, "age_s": obs.age_s, "host": rec.host, "error": obs.error}
    return data


TERMINAL = ("succeeded", "failed", "stopped")
# The --watch loop on the box: one session, a record per interval (status.json, then a mark line with
# the box's clock and cat's exit code). Path, interval, the session's nonce and the byte cap are positional
# args, never pasted in; the nonce keeps a mark-like line inside status.json from splitting a record.
WATCH_LOOP = (
    'while :; do head -c "$4" -- "$1" 2>/dev/null; rc=$?; '
    'printf "\\n@@rgt-watch-%s %s %s\\n" "$3" "$(date +%s.%N)" "$rc" || exit 0; sleep "$2" || exit 0; done'
)


class _Record:
    """One streamed record, read through observe.poll so the staleness rules live in one place."""

    def __init__(self, body: bytes, now: float, rc: int) -> None:
        self.body, self.now, self.rc = body, now, rc

    def read_with_clock(self, path: str, max_bytes=None):
        return (self.body if self.rc == 0 else None), self.now


def _show(app, rec, obs, as_json: bool, clear: bool, sched=None) -> None:
    if as_json:
        app.data(dict(as_data(rec, obs), **({"scheduler": sched} if sched else {})))
        return
    if clear and sys.stdout.isatty():
        click.echo("\x1b[2J\x1b[H", nl=False)
    lines = render(rec, obs)
    if sched:
        from rgt.controller.slurmview import status_lines

        lines += status_lines(rec, obs.view, sched)
    from rgt.controller.boundary import clean

    click.echo("\n".join(clean(x, keep_sgr=True) for x in lines))


def _watch(app, transport, rec, first, as_json: bool) -> int:
    """Stream over ONE box session and redraw on every change; the exit code for the command."""
    import secrets

    from rgt.controller.boundary import MAX_STATUS_BYTES, BoxDataError, watch_records
    from rgt.controller.observe import Observation, poll, remember

    tick_s = first.status.tick_s if first.status else 2.0
    interval_s = min(max(tick_s / 2, 0.2), 2.0)
    nonce = secrets.token_hex(8)
    proc = transport.popen(["sh", "-c", WATCH_LOOP, "sh", f"{rec.run_dir}/status.json", f"{interval_s:g}", nonce,
                            str(MAX_STATUS_BYTES + 1)])
    shown = ((first.status.seq if first.status else None), first.view)
    try:
        assert proc.stdout is not None
        for body, now, rc in watch_records(proc.stdout, f"\n@@rgt-watch-{nonce} ".encode()):
            if now is None:
                continue  # a garbled mark line: wait for the next record
            try:
                obs = poll(_Record(body, now, rc), rec)
            except BoxDataError as e:  # one bad write by the box: say so, keep watching
                app.info(f"rgt: {e}")
                continue
            key = ((obs.status.seq if obs.status else None), obs.view)
            if key != shown:
                remember(app.registry, rec, obs)
                _show(app, rec, obs, as_json, clear=True)
                shown = key
            if obs.status is not None and obs.status.state in TERMINAL:
                return 0
    finally:
        proc.terminate()
        proc.wait()
    from rgt.controller.boundary import box_line

    err = proc.stderr.read()[-4096:].decode(errors="replace").strip() if proc.stderr else ""
    why = box_line(err.splitlines()[-1]) if err else f"the watch session ended (exit {proc.returncode})"
    _show(app, rec, Observation(None, rec.last_status, None, "unreachable", why), as_json, clear=False)
    return 3


@click.command()
@run_argument
@json_option
@click.option("--watch", is_flag=True, help="Keep one session open and redraw on every update.")
@click.pass_obj
def cli(app, run, as_json, watch) -> None:
    """Show a run's state; exit 3 when the box cannot be reached."""
    from rgt.controller.observe import poll, remember

    rec = app.resolve_run(run)
    transport = app.transport_of(rec)
    obs = poll(transport, rec)
    from rgt.controller.slurmview import view_for  # the scheduler's view of the run's job, if it has one

    sched = view_for(transport, rec) if obs.view != "unreachable" else None
    remember(app.registry, rec, obs)
    _show(app, rec, obs, as_json, clear=watch, sched=sched)
    if obs.view == "unreachable":
        sys.exit(3)
    if watch and not (obs.status is not None and obs.status.state in TERMINAL):
        sys.exit(_watch(app, transport, rec, obs, as_json))
