"""Disk sentinel against real filesystems: small tmpfs mounts that run out of inodes and of bytes."""

from __future__ import annotations

import errno
import os

import pytest

from rgt.agent.sentinels import disk as disk_mod
from rgt.agent.sentinels.disk import DiskSentinel, group_mounts, largest_entries


def _by_name(alerts, name):
    return next(a for a in alerts if a.name == name)


def test_inode_exhaustion_warns_before_first_enospc(tmpfs):
    ckpt = tmpfs("ckpt", "size=20m,nr_inodes=200")
    sentinel = DiskSentinel({"ckpt": ckpt}, extra_dirs=())
    levels = []
    created = 0
    with pytest.raises(OSError, match="No space left") as exc:  # noqa: PT012 - fill until ENOSPC
        while True:
            levels.append(_by_name(sentinel.check(0.0), f"inodes:{ckpt}").level)
            for _ in range(10):
                with open(os.path.join(ckpt, f"f{created:04d}"), "wb"):
                    pass
                created += 1
    assert exc.value.errno == errno.ENOSPC
    assert "warn" in levels, f"no warning in {levels} before ENOSPC after {created} files"
    first_warn = levels.index("warn")
    assert all(lv == "ok" for lv in levels[:first_warn])
    final = _by_name(sentinel.check(0.0), f"inodes:{ckpt}")
    assert final.level == "critical"
    assert final.code == "prune_request"
    assert final.data["resource"] == "inodes"
    assert final.data["free_inodes"] == 0
    assert sentinel.host_fields()["inodes_free"] == 0


def test_disk_full_is_critical_with_prune_request_naming_largest_paths(tmpfs):
    ckpt = tmpfs("ckpt", "size=20m")
    os.mkdir(os.path.join(ckpt, "logs"))
    with open(os.path.join(ckpt, "logs", "trainer.log"), "wb") as f:
        f.write(b"x" * 100_000)
    with open(os.path.join(ckpt, "step_1.pt"), "wb") as f:
        f.write(b"\1" * (6 << 20))
    sentinel = DiskSentinel({"ckpt": ckpt}, extra_dirs=())
    assert _by_name(sentinel.check(0.0), f"disk:{ckpt}").level == "ok"
    big = os.path.join(ckpt, "step_2.pt")
    with pytest.raises(OSError, match="No space left") as exc, open(big, "wb") as f:  # noqa: PT012
        while True:
            f.write(b"\2" * (1 << 20))
            f.flush()
    assert exc.value.errno == errno.ENOSPC

    alert = _by_name(sentinel.check(0.0), f"disk:{ckpt}")
    assert alert.level == "critical"
    assert alert.code == "prune_request"
    assert alert.limit == 0.95
    assert alert.value >= 0.95
    largest = alert.data["largest"]
    assert [c["path"] for c in largest[:2]] == [big, os.path.join(ckpt, "step_1.pt")]
    assert largest[0]["bytes"] > 12 << 20
    assert alert.data["largest_files"][0]["path"] == big
    assert big in alert.message
    assert "prune" in alert.message
    assert sentinel.host_fields()["disk_free_bytes"] < 1 << 20


def test_thresholds_are_configurable(tmp_path):
    sentinel = DiskSentinel({"run": str(tmp_path)}, warn_frac=0.0001, crit_frac=1.0, extra_dirs=())
    alert = _by_name(sentinel.check(0.0), f"disk:{tmp_path}")
    assert alert.level == "warn"
    assert alert.code == "disk_low"
    assert alert.limit == 0.0001
    with pytest.raises(ValueError, match="warn_frac"):
        DiskSentinel({}, warn_frac=0.99, crit_frac=0.9)


def test_dirs_on_one_filesystem_are_watched_once(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    mounts = group_mounts([("run", str(run)), ("ckpt", str(run / "ckpt-not-yet")), ("shm", "/dev/shm")])
    names = [m.names for m in mounts]
    assert ["run", "ckpt"] in names
    assert len(mounts) == (2 if os.stat("/dev/shm").st_dev != os.stat(run).st_dev else 1)
    alerts = DiskSentinel({"run": str(run), "ckpt": str(run / "ckpt")}, extra_dirs=()).check(0.0)
    assert sorted(a.name for a in alerts) == [f"disk:{run}", f"inodes:{run}"]


def test_what_took_the_space_is_scanned_only_at_critical(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(disk_mod, "largest_entries", lambda *a, **k: calls.append(a) or {})
    DiskSentinel({"run": str(tmp_path)}, extra_dirs=()).check(0.0)
    assert calls == []


def test_space_scan_is_bounded_and_stays_in_the_watched_dirs(tmp_path):
    for d in range(5):
        sub = tmp_path / f"d{d}"
        sub.mkdir()
        for i in range(20):
            (sub / f"f{i}").write_bytes(b"x" * (d + 1) * 1000)
    dev = os.stat(tmp_path).st_dev
    full = largest_entries([str(tmp_path), str(tmp_path / "d1")], dev)
    assert full["truncated"] is False
    assert full["largest"][0]["path"] == str(tmp_path / "d4")
    assert full["largest"][0]["inodes"] == 21
    assert len(full["largest"]) == 5
    bounded = largest_entries([str(tmp_path)], dev, max_entries=30)
    assert bounded["truncated"] is True
