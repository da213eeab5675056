"""Fuzzing the laptop's parsers of box data (status.json, the journal, the watch stream, terminal text).

Bounded in count and time: random JSON and msgpack, and mutations of real records, give a value or a
BoxDataError/StatusError, never another exception; cleaned text never carries a control sequence.
"""

from __future__ import annotations

import io
import json
import re

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rgt.controller.boundary import BoxDataError, TermFilter, clean, journal_from_box, status_from_box, watch_records
from rgt.shared.status import Status, StatusError

FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow], database=None)
scalars = st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70) | st.floats() | st.text(
    alphabet=st.characters(), max_size=30)
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                       max_size=4), max_leaves=30)
mp_scalars = st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1) | st.floats() | \
    st.text(max_size=30) | st.binary(max_size=20)
mp_values = st.recursive(mp_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
    st.text(max_size=8) | st.integers(min_value=0, max_value=9), kids, max_size=4), max_leaves=30)
REAL = Status(run_id="r1", state="running", updated_at=1.7e9, seq=2).to_dict()
FIELDS = ["run_id", "state", "tick_s", "updated_at", "seq", "trainer", "progress", "checkpoint", "cells",
          "sentinels", "gpus", "host", "cost", "next_action", "schema_version"]
BAD_TERMINAL = re.compile("\x1b(?!\\[[0-9;:]*m)|[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _status_ok(raw: bytes) -> None:
    try:
        s = status_from_box(raw, "r1")
    except (BoxDataError, StatusError):
        return
    assert isinstance(s, Status)
    s.to_json()


@FUZZ
@given(values)
def test_random_json_gives_a_status_or_a_clean_error(doc):
    _status_ok(json.dumps(doc).encode())


@FUZZ
@given(st.sampled_from(FIELDS), values, st.sampled_from(FIELDS), values)
def test_real_status_with_random_fields_gives_a_status_or_a_clean_error(k1, v1, k2, v2):
    d = dict(REAL)
    d[k1] = v1
    d[k2] = v2
    _status_ok(json.dumps(d).encode())


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_give_a_status_or_a_clean_error(raw):
    _status_ok(raw)


@FUZZ
@given(st.lists(mp_values, max_size=6), st.binary(max_size=60))
def test_random_msgpack_journal_is_parsed_never_raised(records, tail):
    data = b"".join(msgpack.packb(r, use_bin_type=True) for r in records) + tail
    read = journal_from_box(data)
    json.dumps(read.records, sort_keys=True)  # what --json prints: always serialisable, keys are text
    for r in read.records:
        assert "t" not in r or (isinstance(r["t"], (int, float)) and 0 <= r["t"] <= 1e11)
        assert "kind" not in r or isinstance(r["kind"], str)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_as_journal_are_parsed_never_raised(data):
    journal_from_box(data)


@FUZZ
@given(st.text(alphabet=st.characters(), max_size=80), st.booleans())
def test_cleaned_text_carries_no_control_sequence(text, keep_sgr):
    out = clean(text, keep_sgr=keep_sgr)
    assert not BAD_TERMINAL.search(out), repr(out)
    assert keep_sgr or "\x1b" not in out


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=40), max_size=10))
def test_streamed_log_bytes_are_cleaned_across_any_chunking(data, cuts):
    f, out, i = TermFilter(), "", 0
    for n in cuts:
        out += f.feed(data[i:i + n])
        i += n
    out += f.feed(data[i:], final=True)
    assert not BAD_TERMINAL.search(out.replace("\r", "")), repr(out)


@FUZZ
@given(st.binary(max_size=300))
def test_watch_stream_garbage_never_raises_anything_but_box_data_error(data):
    mark = b"\n@@rgt-watch-abc "
    try:
        for _body, now, _rc in watch_records(io.BytesIO(data + mark + b"x y\n"), mark, max_bytes=1000):
            assert now is None or isinstance(now, float)
    except BoxDataError:
        pass


def test_clean_keeps_sgr_only_on_request_and_shows_bidi():
    text = "a\x1b[31mred\x1b[0m\x1b]0;t\x07\x1b[2J\x9b5A\u202eb"
    assert clean(text) == "aredb".replace("b", "<U+202E>b")
    assert clean(text, keep_sgr=True) == "a\x1b[31mred\x1b[0m<U+202E>b"
