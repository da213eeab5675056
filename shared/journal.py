"""The append-only msgpack event journal of a run: written by the agent, read by both sides."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, NamedTuple

import msgpack


class JournalRead(NamedTuple):
    """Records read back, and where the last whole record ends."""

    records: List[Dict[str, Any]]
    good_bytes: int
    torn_bytes: int


def read_journal(path: str) -> JournalRead:
    """Read every whole record of a journal file; a torn or garbled tail is reported, never raised."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return JournalRead([], 0, 0)
    return parse_journal(data)


def parse_journal(data: bytes) -> JournalRead:
    """Parse journal bytes (as pulled from a box)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    records: List[Dict[str, Any]] = []
    good = 0
    while True:
        try:
            obj = unpacker.unpack()
        except msgpack.OutOfData:
            break
        except (ValueError, msgpack.UnpackException):
            # A record cut by a crash mid-write, or garbage: everything after is untrusted.
            break
        if not isinstance(obj, dict):
            break
        records.append(obj)
        good = unpacker.tell()
    return JournalRead(records, good, len(data) - good)


class Journal:
    """Appends one msgpack map per event; each append is one write(2) on an O_APPEND fd."""

    def __init__(self, path: str) -> None:
        self.path = path

    def repair(self) -> int:
        """Cut a torn tail left by a crash so later appends stay readable; returns bytes dropped."""
        read = read_journal(self.path)
        if read.torn_bytes:
            with open(self.path, "r+b") as f:
                f.truncate(read.good_bytes)
                os.fsync(f.fileno())
        return read.torn_bytes

    def append(self, kind: str, **fields: Any) -> Dict[str, Any]:
        """Append one event and fsync it; returns the record."""
        record: Dict[str, Any] = {"t": time.time(), "kind": kind}
        record.update(fields)
        data = msgpack.packb(record, use_bin_type=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return record
