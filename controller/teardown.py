"""`rgt down` on the laptop: the Iron Law gate, the meter-stop facts, a typed confirmation, then the provider API.

Nothing is released unless: the laptop holds PULL_VERIFIED.json for this run; it is bound to the manifest
the box builds *now* (a newer checkpoint changes that hash, so an older pull never passes); the local tree
still matches it (stat fingerprint, re-hashed on any difference); the run has ended (or --force-running
with its own typed sentence); and the person typed the run id back. Every refusal is exit 4.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from rgt.shared.errors import BadInput, GateRefused, RgtError, TransportError

from . import pull, verify
from .registry import Registry, RunRecord
from .transport.base import Transport

Echo = Callable[[str], None]
Prompt = Callable[[str], str]


@dataclass
class DownRequest:
    """What `rgt down` was asked."""

    dest: Optional[str] = None
    confirm: Optional[str] = None
    instance_id: Optional[str] = None
    provider: Optional[str] = None
    force_running: bool = False
    jobs: Optional[int] = None


@dataclass
class GatePassed:
    """The evidence the gate accepted."""

    dest: str
    manifest_sha256: str
    record: dict[str, Any]
    ended: bool


def load_profile_or_none(name: str) -> tuple[Any, Optional[str]]:
    """(profile, None) or (None, why it could not be read)."""
    try:
        from .profiles import load_profile
    except ImportError as e:  # the profiles module is another part of rgt; never let its absence unlock anything
        return None, f"profiles are not available in this install ({e})"
    try:
        return load_profile(name or "generic-ssh"), None
    except (RgtError, OSError, ValueError) as e:
        return None, str(e)


def billing_lines(profile: Any, why: Optional[str], name: str) -> list[str]:
    """The meter-stop verb, whether it can be undone, and what keeps billing, from the profile."""
    if profile is None:
        return [f"profile {name!r} could not be read ({why}): rgt cannot tell you what stopping costs. Assume the "
                "provider's meter-stop action is irreversible and deletes the box's disks, and check its console "
                "for volumes or storage that keep billing."]
    b = profile.billing
    if b.meter_stop_verb in ("none", ""):
        return [f"{profile.display_name}: nothing bills here; the run dir stays on the box until you delete it"]
    lines = [f"meter stop on {profile.display_name}: `{b.meter_stop_verb}`, "
             + ("IRREVERSIBLE: everything on the box is gone afterwards" if b.meter_stop_irreversible
                else "reversible")]
    after = list(b.keeps_billing_after_meter_stop)
    lines.append("keeps billing after it: " + ("; ".join(after) if after else "nothing, per the profile"))
    if b.stop_verb and b.stop_verb != b.meter_stop_verb and b.keeps_billing_when_stopped:
        lines.append(f"(a plain `{b.stop_verb}` is not enough: a stopped box still bills "
                     + "; ".join(b.keeps_billing_when_stopped) + ")")
    try:
        from .profiles import irreversible_warnings

        lines += [f"warning: {w}" for w in irreversible_warnings(profile)]
    except (ImportError, RgtError, ValueError):
        pass
    return lines


def gate(transport: Transport, rec: RunRecord, dest: str, force_running: bool, prompt: Prompt, echo: Echo,
         jobs: Optional[int] = None) -> GatePassed:
    """Check the Iron Law; GateRefused (exit 4) names the first thing missing."""
    if verify.read_verified(dest) is None:
        raise GateRefused(f"no verified pull of run {rec.run_id} in {dest}: run `rgt pull {rec.run_id}` first "
                          "(nothing was released)")
    try:
        bm = pull.box_manifest(transport, rec, pull.agent_argv(transport, rec))
    except TransportError as e:
        raise GateRefused(f"cannot read the box's current manifest ({e}): without it rgt cannot prove your pull "
                          "is current, so nothing was released") from None
    except RgtError as e:
        raise GateRefused(f"the box's manifest is not usable ({e}); nothing was released") from None
    if not bm.final:
        from .observe import poll

        try:
            obs = poll(transport, rec)
            state = obs.view if obs.status is None else f"{obs.status.state}, {obs.view}"
        except RgtError as e:  # a malformed status.json still leaves the run not ended: refuse, exit 4
            state = f"status unreadable: {e}"
        if not force_running:
            raise GateRefused(
                f"run {rec.run_id} has not ended (state {state}; no DONE, FAILED or STOPPED marker on the box): wait "
                f"for it (`rgt wait {rec.run_id}`), stop it (`rgt stop {rec.run_id}`), or pass --force-running")
        want = f"{rec.run_id} running"
        echo(f"run {rec.run_id} is still going ({state}): tearing it down loses everything it would still write")
        if prompt(f'Type "{want}" to tear down a run that is still going').strip() != want:
            raise GateRefused("the running-run confirmation did not match; nothing was released")
    record = verify.check_verified(dest, rec.run_id, bm.manifest.sha256, jobs)
    return GatePassed(dest, bm.manifest.sha256, record, bm.final)


def _mark(registry: Registry, rec: RunRecord, **fields: Any) -> None:
    if (registry.dir / f"{rec.run_id}.json").exists():
        rec.extra["teardown"] = dict(fields, at=time.time())
        registry.save(rec)


def down(registry: Registry, transport: Transport, rec: RunRecord, req: DownRequest, prompt: Prompt,
         echo: Echo) -> dict[str, Any]:
    """Gate, facts, confirmation, then destroy through the API (with --instance-id) or say what to do."""
    dest = os.path.abspath(req.dest or rec.pull_dest or pull.default_dest(rec.run_id))
    profile, why = load_profile_or_none(rec.profile)
    client = None
    if req.instance_id:
        from .providers import client_for

        name = req.provider or (profile.launch.status_api if profile is not None else None)
        if not name:
            raise BadInput(f"--instance-id needs --provider vastai|runpod (profile {rec.profile!r} names no API)")
        client = client_for(name)
        client.check_id(req.instance_id)
    passed = gate(transport, rec, dest, req.force_running, prompt, echo, req.jobs)
    r = passed.record
    echo(f"verified pull of {rec.run_id} in {dest}: {r.get('files')} files, {pull.human(int(r.get('bytes') or 0))}, "
         f"manifest {passed.manifest_sha256[:12]} = the box's current one: safe to destroy")
    checked = r.get("checked") if isinstance(r.get("checked"), dict) else {}
    if checked.get("structure") or checked.get("hash"):
        echo(f"note: {int(checked.get('structure') or 0) + int(checked.get('hash') or 0)} checkpoint file(s) of this "
             "pull were checked by hash and structure only (loading them would need full unpickling)")
    for line in billing_lines(profile, why, rec.profile):
        echo(line)
    typed = req.confirm if req.confirm is not None else prompt(f"Type the run id ({rec.run_id}) to confirm")
    if typed.strip() != rec.run_id:
        raise GateRefused("the confirmation did not match the run id; nothing was released")
    if client is None:
        verb = profile.billing.meter_stop_verb if profile is not None else "release"
        if profile is not None and verb in ("none", ""):
            echo(f"cleared: {rec.run_id} is pulled and verified; nothing to release on {rec.host}")
        else:
            where = profile.display_name if profile is not None else "the provider"
            echo(f"cleared: rgt released nothing itself. `{verb}` the box at {where} now; the data is safe in {dest}")
            if profile is not None and profile.launch.status_api in ("vastai", "runpod"):
                echo(f"(or let rgt do it: `rgt down {rec.run_id} --instance-id ID` with the API key in the "
                     "environment)")
        _mark(registry, rec, state="cleared", manifest_sha256=passed.manifest_sha256, dest=dest)
        return {"state": "cleared", "manifest_sha256": passed.manifest_sha256}
    from .providers import destroy_and_confirm

    last = destroy_and_confirm(client, req.instance_id, echo)
    _mark(registry, rec, state="destroyed", provider=client.name, instance_id=req.instance_id,
          manifest_sha256=passed.manifest_sha256, dest=dest, last_state=last)
    try:
        left = client.billables()
    except RgtError as e:
        left = [f"could not list volumes ({e}): check {client.console} for storage that keeps billing"]
    for line in left:
        echo(f"still billing on the account: {line}")
    if not left:
        echo(f"nothing else on the {client.display} account shows as billing storage")
    return {"state": "destroyed", "instance_id": req.instance_id, "billables": left}
