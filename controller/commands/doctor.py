"""`rgt doctor TARGET [--json]` (laptop): runs the agent's pre-flight audit on a box, shows PASS/WARN/FAIL."""

from __future__ import annotations

import json
import sys

import click

from rgt.shared.errors import RgtError

from . import json_option, ssh_options

_COLORS = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}


def parse_report(rc: int, out: bytes, err: bytes) -> list[dict]:
    """The agent's JSON list of checks, or one line saying why there is none."""
    try:
        data = json.loads(out.decode("utf-8", "replace"))
    except ValueError:
        data = None
    if not isinstance(data, list) or not all(isinstance(d, dict) and "result" in d for d in data):
        last = (err.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1]
        raise RgtError(f"the box's doctor gave no report (exit {rc}): {last}")
    return data


def worst(results: list[dict]) -> str:
    """FAIL beats WARN beats PASS."""
    seen = {r.get("result") for r in results}
    return "FAIL" if "FAIL" in seen else "WARN" if "WARN" in seen else "PASS"


def render_doctor(results: list[dict], color: bool) -> list[str]:
    """A PASS/WARN/FAIL table and a verdict line; colours only when asked."""
    width = max((len(str(r.get("name", ""))) for r in results), default=4)
    lines = []
    for r in results:
        result = str(r.get("result", "?"))
        tag = f"{result:<4}"
        if color:
            tag = click.style(tag, fg=_COLORS.get(result), bold=result == "FAIL")
        lines.append(f"{tag}  {str(r.get('name', '')):<{width}}  {r.get('detail', '')}")
    counts = {k: sum(1 for r in results if r.get("result") == k) for k in _COLORS}
    verdict = worst(results)
    advice = "do not launch on this box" if verdict == "FAIL" else "launch OK"
    lines.append(f"doctor: {counts['PASS']} PASS, {counts['WARN']} WARN, {counts['FAIL']} FAIL: {advice}")
    return lines


@click.command()
@click.argument("target")
@json_option
@ssh_options
@click.pass_context
def cli(ctx: click.Context, target: str, as_json: bool, port, ssh_config) -> None:
    """Audit TARGET (an ssh destination, or `local`) before a launch; exit 1 on any FAIL."""
    transport = ctx.obj.transport_for(target, port=port, ssh_config=ssh_config)
    rc, out, err = transport.run_agent(["doctor"])
    results = parse_report(rc, out, err)
    if as_json:
        click.echo(json.dumps(results, indent=2, sort_keys=True))
    else:
        color = sys.stdout.isatty()
        for line in render_doctor(results, color):
            click.echo(line, color=color)
    ctx.exit(1 if worst(results) == "FAIL" else 0)
