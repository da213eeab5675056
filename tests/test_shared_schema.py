import json
import os
from pathlib import Path

import pytest

from rgt.shared.atomic import atomic_write
from rgt.shared.errors import BadInput
from rgt.shared.journal import Journal, read_journal
from rgt.shared.manifest import Entry, Manifest, ManifestError, build_manifest
from rgt.shared.paths import generate_run_id, validate_run_id
from rgt.shared.states import IllegalTransition, RunState, check_transition
from rgt.shared.status import SCHEMA_VERSION, Status, StatusError, parse_status


@pytest.fixture
def tiny_tmpfs(tmpfs):
    return Path(tmpfs("tiny", "size=64k,nr_inodes=16"))


def _fill_bytes(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    finally:
        os.close(fd)


def _fill_inodes(directory):
    n = 0
    while True:
        (directory / f"f{n}").write_bytes(b"")
        n += 1


def test_disk_full_keeps_previous_status_and_leaves_no_temp_file(tiny_tmpfs):
    status = tiny_tmpfs / "status.json"
    atomic_write(str(status), b'{"seq": 1}')
    filler = tiny_tmpfs / "filler"
    with pytest.raises(OSError, match="No space left"):
        _fill_bytes(filler)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(str(status), b'{"seq": 2, "pad": "' + b"y" * 65536 + b'"}')
    assert status.read_bytes() == b'{"seq": 1}'
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["filler", "status.json"]


def test_inode_exhaustion_keeps_previous_status(tiny_tmpfs):
    status = tiny_tmpfs / "status.json"
    atomic_write(str(status), b"old")
    with pytest.raises(OSError, match="No space left"):
        _fill_inodes(tiny_tmpfs)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(str(status), b"new")
    assert status.read_bytes() == b"old"
    assert not [p for p in tiny_tmpfs.iterdir() if p.name.endswith(".tmp")]


def test_journal_reads_back_and_tolerates_a_torn_last_record(tmp_path):
    path = tmp_path / "events.msgpack"
    j = Journal(str(path))
    j.append("transition", old="unknown", new="starting", reason="first start")
    j.append("transition", old="starting", new="running", reason="ok")
    whole = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\x85\xa1t\xcb")  # a record cut by a crash mid-write
    read = read_journal(str(path))
    assert [r["new"] for r in read.records] == ["starting", "running"]
    assert read.good_bytes == whole and read.torn_bytes == 4
    assert j.repair() == 4
    j.append("marker", name="DONE")
    assert [r["kind"] for r in read_journal(str(path)).records] == ["transition", "transition", "marker"]


def test_status_round_trips_with_unknowns_as_null():
    st = Status(run_id="r1", state="running")
    d = json.loads(st.to_json())
    assert d["schema_version"] == SCHEMA_VERSION
    assert d["progress"]["step"] is None and d["host"]["disk_free_bytes"] is None
    assert parse_status(st.to_json()).run_id == "r1"


def test_status_nan_loss_is_written_as_null_not_invalid_json():
    st = Status(run_id="r1", state="running")
    st.progress.loss = float("nan")
    assert json.loads(st.to_json())["progress"]["loss"] is None


def test_truncated_status_is_a_one_line_error():
    raw = Status(run_id="r1", state="running").to_json()
    with pytest.raises(StatusError, match="truncated"):
        parse_status(raw[: len(raw) // 2])


def test_newer_schema_is_refused_in_plain_words():
    d = json.loads(Status(run_id="r1", state="running").to_json())
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StatusError, match="upgrade rgt"):
        parse_status(json.dumps(d).encode())


def test_status_from_a_newer_agent_of_the_same_schema_keeps_working():
    d = json.loads(Status(run_id="r1", state="running").to_json())
    d["some_new_field"] = {"x": 1}
    d["progress"]["new_inner"] = 3
    assert parse_status(json.dumps(d).encode()).state == "running"


@pytest.mark.parametrize("bad", ["", "-x", "UPPER", "a" * 65, "a/b", "../x", "a b", ".hidden"])
def test_bad_run_ids_are_refused(bad):
    with pytest.raises(BadInput):
        validate_run_id(bad)


def test_generated_run_ids_are_valid():
    assert validate_run_id(generate_run_id("My Train_Script.py"))


def test_illegal_transition_raises():
    check_transition(RunState.RUNNING, RunState.BACKOFF)
    with pytest.raises(IllegalTransition):
        check_transition(RunState.SUCCEEDED, RunState.RUNNING)
    with pytest.raises(IllegalTransition):
        check_transition(RunState.BACKOFF, RunState.SUCCEEDED)


def test_manifest_hash_is_over_canonical_json(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"abc")
    (tmp_path / "log.txt").write_bytes(b"hello")
    m = build_manifest(str(tmp_path), "r1", [("a.pt", "checkpoint"), ("log.txt", "log")])
    again = Manifest.from_bytes(m.to_json())
    assert again.sha256 == m.sha256
    assert m.to_json() == json.dumps(m.to_dict(), sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize("path", ["../x", "/abs", "a/../b", "a//b", "a\\b", "x\ny", "./a", ""])
def test_manifest_refuses_unsafe_paths(path):
    m = Manifest(run_id="r1", entries=[Entry(path, 1, "0" * 64, "artifact")])
    with pytest.raises(ManifestError):
        m.validate()


def test_manifest_refuses_empty_duplicates_and_symlinks(tmp_path):
    with pytest.raises(ManifestError, match="empty"):
        Manifest(run_id="r1").validate()
    e = Entry("a", 1, "0" * 64, "artifact")
    with pytest.raises(ManifestError, match="twice"):
        Manifest(run_id="r1", entries=[e, e]).validate()
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ManifestError, match="symlink"):
        build_manifest(str(tmp_path), "r1", [("link", "artifact")])
