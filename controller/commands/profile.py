"""`rgt profile list | show NAME | check`: the platform facts rgt acts on, and how fresh they are (controller)."""

from __future__ import annotations

import dataclasses
import json
import unicodedata

import click

from rgt.shared.errors import BadInput, RgtError

from ..briefing import briefing
from ..envrecipe import env_recipe
from ..profiles import (
    STALE_AFTER_MONTHS,
    fact_groups,
    irreversible_warnings,
    list_profiles,
    load_profile,
    now_s,
    placeholders,
    profile_names,
    stale_facts,
)


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True))


@click.group("profile")
def cli() -> None:
    """Platform profiles: where to write, what survives, what keeps billing, the danger clocks."""


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def list_cmd(as_json: bool) -> None:
    """List every profile, packaged and your own (~/.config/rgt/profiles or RGT_CONFIG_DIR/profiles)."""
    profiles = list_profiles()
    if as_json:
        _echo_json([{"name": p.name, "display_name": p.display_name, "kind": p.kind, "origin": p.origin,
                     "durable_dir": p.durable_dir, "meter_stop_verb": p.billing.meter_stop_verb,
                     "meter_stop_irreversible": p.billing.meter_stop_irreversible,
                     "oldest_verified": min(v for _, v, _ in fact_groups(p))} for p in profiles])
        return
    rows = [("NAME", "KIND", "METER STOP", "DURABLE DIR", "VERIFIED", "FROM")]
    for p in profiles:
        verb = p.billing.meter_stop_verb + (" (irreversible)" if p.billing.meter_stop_irreversible else "")
        rows.append((p.name, p.kind, verb, p.durable_dir or "-", min(v for _, v, _ in fact_groups(p)), p.origin))
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c + " " * (w - _width(c)) for c, w in zip(r, widths)).rstrip())


@cli.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the profile and its env recipe as JSON.")
def show_cmd(name: str, as_json: bool) -> None:
    """Show one profile: the first-contact briefing, its files, and the env recipe for the trainer."""
    p = load_profile(name)
    recipe = env_recipe(p)
    if as_json:
        data = dataclasses.asdict(p)
        data["env_recipe"] = {"env": recipe.env, "extra": recipe.extra, "notes": list(recipe.notes)}
        _echo_json(data)
        return
    click.echo(briefing(p))
    click.echo("")
    click.echo("Trainer environment (before the box adds its proxy and thread caps):")
    for k, v in sorted(recipe.env.items()):
        click.echo(f"  {k}={v}")
    for note in recipe.notes:
        click.echo(f"  note: {note}")
    click.echo("")
    click.echo("Sources: " + "; ".join(f"{g} ({v}): {s}" for g, v, s in fact_groups(p)[:5]))
    click.echo("Files: " + ", ".join(p.files))
    for todo in placeholders(p):
        click.echo(f"warning: {p.name}: {todo} is a placeholder: set it in your own profile", err=True)


@cli.command("check")
@click.option("--max-age-months", default=STALE_AFTER_MONTHS, show_default=True, type=click.IntRange(0),
              help="Facts verified longer ago than this are stale.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON on stdout.")
def check_cmd(max_age_months: int, as_json: bool) -> None:
    """Validate every profile and flag stale facts (RGT_NOW fakes today's date); exit 1 when any is stale."""
    now = now_s()
    errors, stale, risky, todos = [], [], [], []
    for name in profile_names():
        try:
            p = load_profile(name)
        except BadInput as e:
            errors.append(str(e))
            continue
        stale += stale_facts(p, now, max_age_months)
        risky += irreversible_warnings(p, now, max_age_months)
        todos += [f"{p.name}: {t}" for t in placeholders(p)]
    if as_json:
        _echo_json({"invalid": errors, "stale": [dataclasses.asdict(s) for s in stale],
                    "irreversible_on_stale_facts": risky, "placeholders": todos})
    else:
        for line in errors:
            click.echo(f"error: {line}", err=True)
        grouped: dict[tuple[str, str, int], list[str]] = {}
        for s in stale:
            grouped.setdefault((s.profile, s.verified, s.age_months), []).append(s.group)
        for (name, verified, age), groups in grouped.items():
            click.echo(f"stale: {name}: verified {verified} ({age} months old): {', '.join(groups)}: "
                       f"re-check them (rgt profile show {name} lists the sources)", err=True)
        for line in risky:
            click.echo(f"WARNING: {line}", err=True)
        for line in todos:
            click.echo(f"note: {line}: fill it in your own profile", err=True)
    if errors:
        raise BadInput(f"{len(errors)} profile(s) do not load: fix them before use")
    if stale:
        raise RgtError(f"{len(stale)} fact group(s) are older than {max_age_months} months: re-verify them")
    if not as_json:
        click.echo(f"all {len(profile_names())} profiles load; every fact is at most {max_age_months} months old",
                   err=True)
