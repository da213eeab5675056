"""The sentinel runner: intervals, isolation of a broken sentinel, and the status.json snapshot."""

from __future__ import annotations

import json
import logging

import pytest

from rgt.agent.sentinels import Alert, SentinelRunner, build_sentinels
from rgt.shared.status import Host, Status


class Counting:
    def __init__(self, name, interval_s, level="ok", host=None):
        self.name = name
        self.interval_s = interval_s
        self.level = level
        self.calls = []
        self.host = host or {}

    def check(self, now):
        self.calls.append(now)
        return [Alert(self.name, self.level, 0.5, 0.9, None if self.level == "ok" else "bad", "x")]

    def host_fields(self):
        return self.host


class Broken:
    name = "broken"
    interval_s = 5.0

    def __init__(self):
        self.calls = 0

    def check(self, now):
        self.calls += 1
        raise ZeroDivisionError("boom")


def test_sentinels_run_only_when_due():
    fast, slow = Counting("fast", 2.0), Counting("slow", 10.0)
    runner = SentinelRunner([fast, slow])
    for now in range(0, 21, 2):
        runner.tick(float(now))
    assert fast.calls == [float(t) for t in range(0, 21, 2)]
    assert slow.calls == [0.0, 10.0, 20.0]


def test_a_clock_that_jumps_back_does_not_starve_a_sentinel():
    s = Counting("s", 10.0)
    runner = SentinelRunner([s])
    runner.tick(1000.0)
    runner.tick(5.0)
    assert s.calls == [1000.0, 5.0]


def test_tick_returns_warn_and_critical_only():
    runner = SentinelRunner([Counting("a", 1.0), Counting("b", 1.0, "warn"), Counting("c", 1.0, "critical")])
    assert [a.name for a in runner.tick(0.0)] == ["b", "c"]
    assert [a.name for a in runner.alerts()] == ["a", "b", "c"]


def test_exception_in_a_sentinel_becomes_sentinel_error_and_the_others_run(caplog):
    broken, fine = Broken(), Counting("fine", 5.0, "warn")
    runner = SentinelRunner([broken, fine], logging.getLogger("test.sentinels"))
    with caplog.at_level(logging.ERROR, logger="test.sentinels"):
        alerts = runner.tick(0.0)
    assert [(a.name, a.code) for a in alerts] == [("broken", "sentinel_error"), ("fine", "x")]
    err = alerts[0]
    assert err.level == "warn"
    assert "ZeroDivisionError: boom" in err.message
    assert "Traceback" in err.data["traceback"]
    assert "ZeroDivisionError" in caplog.text
    assert "Traceback" in caplog.text
    runner.tick(2.0)
    assert broken.calls == 1  # a failing sentinel keeps its interval, it is not hammered
    runner.tick(5.0)
    assert (broken.calls, len(fine.calls)) == (2, 2)


def test_a_callable_log_gets_the_traceback():
    lines = []
    SentinelRunner([Broken()], lines.append).tick(0.0)
    assert "ZeroDivisionError" in lines[0]


def test_snapshot_fits_status_json():
    runner = SentinelRunner([Counting("d", 10.0, "warn", {"disk_free_bytes": 5, "bogus": 1}),
                             Counting("m", 3.0, host={"oom_kills": 0, "mem_used_bytes": 7})])
    runner.tick(0.0)
    sentinels, gpus, host = runner.snapshot()
    assert host == Host(disk_free_bytes=5, mem_used_bytes=7, oom_kills=0)
    assert gpus == []
    status = Status(run_id="r", state="running", sentinels=sentinels, gpus=gpus, host=host)
    d = json.loads(status.to_json())
    assert d["sentinels"][0] == {"name": "d", "level": "warn", "value": 0.5, "limit": 0.9, "message": "bad"}
    assert d["host"]["inodes_free"] is None


def test_alert_rejects_unknown_levels():
    with pytest.raises(ValueError, match="level"):
        Alert("x", "error")


def test_build_sentinels_on_this_machine(tmp_path):
    (tmp_path / "run").mkdir()
    runner = build_sentinels({"run": str(tmp_path / "run"), "ckpt": str(tmp_path / "run" / "ckpt")},
                             own_pids=lambda: [])
    runner.tick(0.0)
    sentinels, gpus, host = runner.snapshot()
    names = [s.name for s in sentinels]
    assert f"disk:{tmp_path / 'run'}" in names
    assert "memory" in names
    assert host.disk_free_bytes > 0
    assert host.mem_limit_bytes > 0
    gpu = next(s for s in sentinels if s.name.startswith("gpu"))
    if not gpus:  # no driver here: one line says why
        assert gpu.message.startswith("no GPU data: ")
    runner.close()
