"""Spend in status and `rgt runs`, and the danger clocks of parked runs counting down (laptop registry)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rgt.controller.registry import Registry, RunRecord
from tests.conftest import wait_until

DAY = 86400.0
T0 = 1_780_000_000.0  # a fixed "box stopped" time; RGT_NOW fakes the clock around it


def _record(env, run_id, profile="autodl", state="succeeded", usd=None, rate=None, **extra) -> RunRecord:
    rec = RunRecord(run_id=run_id, host="box-" + run_id, root="/root/autodl-tmp/.rgt", profile=profile,
                    last_status={"state": state, "cost": {"usd_per_hour": rate, "usd_so_far": usd}},
                    last_seen_at=T0, extra=extra)
    Registry(Path(env.state)).save(rec)
    return rec


def _runs_json(env, now=None) -> dict:
    res = env.rgt("runs", "--json", check=True, extra_env={"RGT_NOW": str(now)} if now else None)
    return {r["run_id"]: r for r in json.loads(res.stdout)}


def test_status_spend_is_the_rate_times_the_time_since_the_spec_was_made(env):
    before = time.time()
    env.rgt("up", "local", "--run", "paid", "--usd-per-hour", "36", "--", "python3", "train.py", check=True,
            extra_env={"STEPS": "3", "STEP_SLEEP_S": "0.1"})
    wait_until(lambda: env.marker("paid"), timeout_s=120, what="the run to end")
    after = time.time()
    cost = env.status("paid")["cost"]
    assert cost["usd_per_hour"] == 36
    # 36 $/h is 0.01 $/s: spend is positive and no more than the wall time the run can have had
    assert 0 < cost["usd_so_far"] <= 0.01 * (after - before) + 1e-4
    out = env.rgt("runs", "--refresh", check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("paid "))
    assert "36.00" in line and f"{cost['usd_so_far']:.2f}" in line
    assert "total" in out


def test_runs_totals_the_spend_of_every_run_it_knows(env):
    _record(env, "a", usd=1.25, rate=0.5)
    _record(env, "b", usd=2.5, rate=1.0, profile="vastai")
    _record(env, "c", usd=None)  # no rate known: shown as "-", not counted as 0
    out = env.rgt("runs", check=True).stdout
    total_line = next(x for x in out.splitlines() if "total" in x)
    assert total_line.split()[-1] == "3.75"
    c_line = next(x for x in out.splitlines() if x.startswith("c "))
    assert c_line.split()[-1] == "-"
    rows = _runs_json(env)
    assert rows["a"]["usd_so_far"] == 1.25 and rows["b"]["usd_per_hour"] == 1.0 and rows["c"]["usd_so_far"] is None


def test_a_parked_autodl_box_shows_its_release_clock_counting_down(env):
    _record(env, "parked1")
    env.rgt("runs", "park", "parked1", "--at", str(T0), check=True, extra_env={"RGT_NOW": str(T0 + 60)})
    rows = _runs_json(env, now=T0 + 14 * DAY)
    row = rows["parked1"]
    assert row["parked"] == {"at": T0, "by": "rgt runs park"}
    release = next(c for c in row["clocks"] if c["name"] == "auto_release")
    assert release["remaining_s"] == DAY and release["fired"] is False
    out = env.rgt("runs", check=True, extra_env={"RGT_NOW": str(T0 + 14 * DAY)}).stdout
    assert "succeeded*" in out
    assert "auto_release: in 24 hours" in out and "within a day" in out
    assert "stopped 14 days ago" in out


def test_a_clock_that_has_run_out_says_it_fired(env):
    _record(env, "late", parked={"at": T0, "by": "rgt runs park"})
    out = env.rgt("runs", check=True, extra_env={"RGT_NOW": str(T0 + 17 * DAY)}).stdout
    assert "auto_release: FIRED 2 days ago" in out


def test_down_on_a_platform_whose_meter_stop_is_a_plain_stop_parks_the_run(env):
    _record(env, "down1", teardown={"state": "cleared", "at": T0})  # AutoDL: 关机 is the meter stop
    _record(env, "down2", profile="vastai", teardown={"state": "cleared", "at": T0})  # destroy: box gone
    _record(env, "down3", profile="autodl", teardown={"state": "destroyed", "at": T0})
    rows = _runs_json(env, now=T0 + DAY)
    assert rows["down1"]["parked"]["by"].startswith("rgt down")
    assert [c["name"] for c in rows["down1"]["clocks"]][0] == "auto_release"
    assert rows["down1"]["clocks"][0]["remaining_s"] == 14 * DAY
    assert rows["down2"]["parked"] is None and rows["down2"]["clocks"] == []
    assert rows["down3"]["parked"] is None


def test_standing_clocks_of_a_parked_vast_box_are_shown_without_a_countdown(env):
    _record(env, "v1", profile="vastai", parked={"at": T0, "by": "rgt runs park"})
    row = _runs_json(env, now=T0 + DAY)["v1"]
    assert [(c["name"], c["remaining_s"]) for c in row["clocks"]] == [("stopped_disk_bills", None)]
    assert row["still_billing"]
    out = env.rgt("runs", check=True, extra_env={"RGT_NOW": str(T0 + DAY)}).stdout
    assert "stopped_disk_bills: for as long as it stays stopped" in out
    assert "still billing while stopped" in out


def test_unpark_forgets_the_stop(env):
    _record(env, "u1", teardown={"state": "cleared", "at": T0})
    env.rgt("runs", "unpark", "u1", check=True)
    assert _runs_json(env, now=T0 + DAY)["u1"]["parked"] is None
    env.rgt("runs", "park", "u1", check=True)
    assert _runs_json(env)["u1"]["parked"]["by"] == "rgt runs park"
    bad = env.rgt("runs", "park", "u1", "--at", "yesterday-ish")
    assert bad.returncode == 2 and "--at" in bad.stderr
