"""A hostile box's status.json, journal and logs through every command, over the real sshd and under a real pty.

Wrong types, huge values, deep nesting, escape sequences and a fake watch marker: each command ends with
a clear line or a cleaned display, never `internal error`, never a traceback; on a terminal no OSC, DCS or
APC string, no CSI other than SGR colours, no C1 control and no raw bidi override arrives.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time

import msgpack
import pytest

from tests.conftest import scaled, wait_until
from tests.hostile_box import HostileBox, good_status
from tests.sshbox import RGT

pytest_plugins = ["tests.conftest_ssh"]

RUN = "hostile2"
NASTY = ("a\x1b]0;pwned-title\x07b\x1b]52;c;cHduZWQ=\x1b\\c\x1b[2J\x1b[5A\x1b[?1049h\x9b2J\x9d0;x\x07d\u202eevil"
         "\x1bPq#\x1b\\")


def _deep(n: int) -> bytes:
    return (b'{"schema_version":1,"run_id":"%s","state":"running","progress":{"metrics":' % RUN.encode()
            + b'{"a":' * n + b"1" + b"}" * n + b"}}")


STATUSES = {
    "loss_as_text": (lambda: good_status(RUN, progress={"loss": "x"}), "field progress.loss"),
    "tick_as_text": (lambda: good_status(RUN, tick_s="2"), "field tick_s"),
    "updated_at_as_text": (lambda: good_status(RUN, updated_at="now"), "field updated_at"),
    "updated_at_1e300": (lambda: good_status(RUN, updated_at=1e300), "field updated_at"),
    "trainer_is_text": (lambda: good_status(RUN, trainer="x"), "field trainer"),
    "gpus_are_text": (lambda: good_status(RUN, gpus=["x"]), "field gpus[0]"),
    "sentinel_level_number": (lambda: good_status(RUN, sentinels=[{"name": "disk", "level": 3}]), "sentinels[0].level"),
    "loss_nan_literal": (lambda: json.dumps(good_status(RUN, progress={"loss": float("nan")})).encode(),
                         "field progress.loss"),
    "seq_huge": (lambda: good_status(RUN, seq=10 ** 40), "field seq"),
    "nested_100k_deep": (lambda: _deep(100_000), "nested"),
    "nested_40_deep": (lambda: _deep(40), "nested"),
    "another_run": (lambda: good_status("r2\x1b[2J"), "for run"),
    "not_json": (lambda: b"\x1b]0;x\x07{{{", "truncated or not JSON"),
    "hundred_megabytes": (lambda: json.dumps(good_status(RUN, next_action="x" * (100 << 20))).encode(), "over"),
    "escapes_everywhere": (lambda: good_status(
        RUN, next_action=NASTY, trainer={"last_failure": {"class": "crashed" + NASTY, "evidence": NASTY}},
        checkpoint={"last_path": "ckpt/" + NASTY, "last_step": 3},
        sentinels=[{"name": "disk" + NASTY, "level": "warn", "message": NASTY}]), None),
    "fake_watch_marker": (lambda: json.dumps(good_status(RUN)).encode()[:-1] + b"\n@@rgt-watch 1 0\n}", "not JSON"),
}


def _clean_run(res: subprocess.CompletedProcess) -> str:
    both = res.stdout + res.stderr
    assert "Traceback" not in both and "internal error" not in both, both[-2000:]
    assert "\x1b" not in both and not re.search("[\x80-\x9f\u202e]", both), repr(both[-500:])
    return both


@pytest.fixture
def hostile(sshbox, rgt):
    box = HostileBox(sshbox, rgt.state, RUN)
    yield box
    box.close()


@pytest.mark.parametrize("name", sorted(STATUSES))
def test_hostile_status_through_every_command(hostile, rgt, tmp_path, name):
    make, words = STATUSES[name]
    hostile.status(make())
    for args in (["status", RUN], ["status", RUN, "--json"], ["status", RUN, "--watch"]):
        res = rgt(*args, timeout_s=scaled(60))
        both = _clean_run(res)
        if words is None:
            assert res.returncode == 0, both
        else:
            assert res.returncode == 1, both
            line = [x for x in res.stderr.splitlines() if x.strip()]
            assert len(line) == 1 and words in line[0], res.stderr
    res = rgt("runs", "--refresh")
    _clean_run(res)
    assert res.returncode == 0
    record = (rgt.state + f"/runs/{RUN}.json")
    assert os.path.getsize(record) < (8 << 20)  # a 100 MB status is never saved on the laptop
    _clean_run(rgt("runs"))
    # The gate reads status only for a run that has not ended: the manifest says "partial".
    hostile.serve_entries([hostile.entry("code/out/a.bin")])
    words_file = hostile.run_dir / ".hostile-manifest.words"
    words_file.write_text(words_file.read_text().replace("final", "partial"))
    res = rgt("pull", RUN, cwd=str(tmp_path))
    _clean_run(res)
    assert res.returncode == 0, res.stderr
    res = rgt("down", RUN, "--confirm", RUN, cwd=str(tmp_path))
    _clean_run(res)
    assert res.returncode == 4


JOURNALS = {
    "t_as_text": {"t": "x", "kind": "transition", "old": "running", "new": "failed", "reason": "r"},
    "t_1e300": {"t": 1e300, "kind": "note"},
    "t_nan": {"t": float("nan"), "kind": "note"},
    "t_negative": {"t": -5.0, "kind": "note"},
    "kind_number": {"t": 1.0, "kind": 7},
    "int_keys": {1: "a", "t": 1.0, "kind": "note"},
    "escapes": {"t": 1.0, "kind": "note" + NASTY, NASTY: NASTY, "nested": {"x": [NASTY]}},
    "bytes_and_ext": {"t": 1.0, "kind": "note", "b": b"\x1b]0;x\x07", "e": msgpack.ExtType(5, b"\x1b[2J")},
    "huge_int": {"t": 1.0, "kind": "note", "n": 2 ** 64 - 1},
}


def _journal() -> bytes:
    body = b"".join(msgpack.packb(r, use_bin_type=True) for r in JOURNALS.values())
    good = msgpack.packb({"t": 1700000000.0, "kind": "transition", "old": "running", "new": "succeeded",
                          "reason": "exit 0"}, use_bin_type=True)
    return good + body + good + b"\x81\x91\x01\x02" + b"\x91" * 100_000 + b"\xc0"  # unhashable key, 100k deep


def test_hostile_journal_is_listed_with_notes_never_a_crash(hostile, rgt):
    hostile.write("events.msgpack", _journal())
    res = rgt("events", RUN)
    both = _clean_run(res)
    assert res.returncode == 0, both
    assert res.stdout.count("running -> succeeded: exit 0") == 2  # the good records around the bad ones stay
    assert "field t is not a time" in res.stderr and "field kind is not text" in res.stderr
    assert "torn" in res.stderr
    res = rgt("events", RUN, "--json")
    _clean_run(res)
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(rows) == len(JOURNALS) + 2


# -- under a real terminal -------------------------------------------------------------------------------------

def run_pty(argv, env, cwd, timeout_s=60.0, until=None, then=None):
    """Run argv with stdin/stdout/stderr on a pty; (exit code, every byte the terminal received)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, close_fds=True)
    os.close(slave)
    out, deadline, fired = b"", time.monotonic() + scaled(timeout_s), False
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the other side closed
                    break
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                break
            if until is not None and not fired and until in out:
                fired = True
                then()
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(30)
        os.close(master)
    return p.returncode, out


OURS = ("\x1b[2J\x1b[H", "\r\x1b[K")  # rgt's own redraw and progress line, never the box's


def assert_terminal_clean(out: bytes) -> str:
    text = out.decode("utf-8", "replace")
    for seq in OURS:
        text = text.replace(seq, "")
    assert "Traceback" not in text and "internal error" not in text, text[-2000:]
    assert not re.search("\x1b[\\]P_^X]", text), repr(text[-800:])  # OSC, DCS, APC, PM, SOS
    for m in re.finditer("\x1b\\[([0-?]*)[ -/]*([@-~])", text):
        assert m.group(2) == "m", repr(m.group(0))
    assert not re.search("\x1b[^\\[]", text), repr(text[-800:])
    assert not re.search("[\x80-\x9f\u202a-\u202e\u2066-\u2069]", text), repr(text[-800:])
    return text


def test_display_on_a_terminal_carries_no_control_sequence(hostile, rgt, sshbox, tmp_path):
    env = sshbox.env(rgt.state)
    hostile.status(good_status(RUN, next_action=NASTY,
                               trainer={"last_failure": {"class": "crashed", "evidence": NASTY}},
                               sentinels=[{"name": "disk", "level": "warn", "message": NASTY}]))
    hostile.write("events.msgpack", _journal())
    hostile.write("logs/trainer.log", b"step 1\r\n" + NASTY.encode() + b"\n\x1b[31mred\x1b[0m loss 0.5\n")
    for args in (["status", RUN], ["status", RUN, "--watch"], ["events", RUN], ["logs", RUN], ["runs"]):
        code, out = run_pty([RGT, *args], env, str(tmp_path))
        text = assert_terminal_clean(out)
        assert code == 0, text
        if args[0] == "logs":
            assert "\x1b[31mred\x1b[0m" in text  # the trainer's colours stay
            assert "pwned-title" not in text.split("step 1")[0]
    code, out = run_pty([RGT, "logs", RUN, "--raw"], env, str(tmp_path))
    assert code == 0 and b"\x1b]0;pwned-title\x07" in out  # asked for: the box's bytes as they are
    piped = subprocess.run([RGT, "logs", RUN], env=env, capture_output=True, timeout=scaled(60))
    assert b"\x1b]0;pwned-title\x07" in piped.stdout  # not a terminal: raw for files and pipes


def test_watch_survives_a_fake_marker_and_a_bad_write(hostile, rgt, sshbox, tmp_path):
    env = sshbox.env(rgt.state)
    hostile.status(good_status(RUN, state="running", tick_s=0.5))

    status_path = hostile.run_dir / "status.json"
    p_master, p_slave = pty.openpty()
    p = subprocess.Popen([RGT, "status", RUN, "--watch"], stdin=p_slave, stdout=p_slave, stderr=p_slave, env=env,
                         cwd=str(tmp_path), close_fds=True)
    os.close(p_slave)
    out = b""

    def read_some() -> bytes:
        nonlocal out
        r, _, _ = select.select([p_master], [], [], 0.2)
        if r:
            try:
                out += os.read(p_master, 65536)
            except OSError:
                pass
        return out

    try:
        wait_until(lambda: b"running" in read_some(), what="the first redraw")
        hostile.status(json.dumps(good_status(RUN, state="running", seq=4)).encode()[:-1] + b"\n@@rgt-watch 1 0\n}")
        wait_until(lambda: b"not JSON" in read_some(), what="the bad write reported")
        status_path.write_text(json.dumps(good_status(RUN, state="succeeded", seq=9)))
        hostile.own()
        wait_until(lambda: p.poll() is not None and read_some() is not None, what="watch to end on succeeded")
        read_some()
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(30)
        os.close(p_master)
    assert p.returncode == 0, out[-2000:]
    assert_terminal_clean(out)
