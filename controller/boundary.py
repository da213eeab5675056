"""The laptop's one gate for data from the box: bounded parsing, schema types, run ids, and text safe for a terminal.

The box is a stranger's machine (docs/threat-model.md). Every command that shows or keeps something the
box sent goes through here: status.json (``status_from_box``), the journal (``journal_from_box``), the
`status --watch` stream (``watch_records``), one-line messages (``box_line``), and anything printed
(``clean``; ``TermFilter`` for streamed log bytes). Parsing is bounded in bytes, depth and entries; a field of
the wrong type is a one-line "malformed ... from the box: field X" (exit 1), or, in the journal, a dropped
field with a note; display text loses every control sequence except SGR colours, and bidi overrides show.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import math
import re
import typing
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

from rgt.shared.errors import RgtError

MAX_STATUS_BYTES = 4 << 20  # a real status.json is a few KB; a long queue's cells stay far below this
MAX_JOURNAL_BYTES = 64 << 20
MAX_JOURNAL_RECORDS = 200_000
MAX_DEPTH = 32  # the deepest real status nesting is 4
MAX_NODES = 500_000
MAX_LIST = 100_000
MAX_INT = 1 << 63
MAX_TIME_S = 1e11  # year 5138: beyond it a timestamp is garbage, and datetime would overflow
MAX_VALUE_CHARS = 2000  # one journal value or status field as displayed
MAX_LINE_CHARS = 500  # one box message line


class BoxDataError(RgtError):
    """What the box sent cannot be used (malformed, too big, another run's): exit 1, one line."""


# -- text for a terminal ---------------------------------------------------------------------------------------

# OSC, DCS, SOS, PM, APC: a string up to ST (ESC \, or 0x9c), or BEL for OSC, in 7-bit or 8-bit form.
_STRING_SEQ = r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
_CSI = r"(?:\x1b\[|\x9b)([\x30-\x3f]*)[\x20-\x2f]*([\x40-\x7e])"
_ESC_OTHER = r"\x1b[\x20-\x2f]*[\x30-\x7e]"  # ESC c (reset), ESC 7/8, charset switches, ...
_SEQ_RE = re.compile(f"{_STRING_SEQ}|{_CSI}|{_ESC_OTHER}")
_SGR_PARAMS = re.compile(r"[0-9;:]*")
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029"
_CONTROL_RE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{BIDI}]")
_INTRODUCERS = "\x1b\x90\x98\x9b\x9d\x9e\x9f"


def _visible(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"<U+{n:04X}>"


def clean(text: Any, keep_sgr: bool = False, keep_cr: bool = False, limit: Optional[int] = None) -> str:
    """``text`` made safe to print: sequences removed (SGR kept on request), other controls and bidi shown escaped."""
    text = text if isinstance(text, str) else str(text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."

    def seq(m: "re.Match[str]") -> str:
        if keep_sgr and m.group(2) == "m" and m.group(0).startswith("\x1b[") and _SGR_PARAMS.fullmatch(m.group(1)):
            return m.group(0)
        return ""

    out = _SEQ_RE.sub(seq, text)
    keep = "\x1b" if keep_sgr else ""  # the SGR kept above are the only ESC left that may pass

    def ctl(m: "re.Match[str]") -> str:
        c = m.group(0)
        return c if (c == "\r" and keep_cr) or c in keep else _visible(c)

    if keep:
        out = re.sub(r"\x1b(?!\[[0-9;:]*m)", lambda m: _visible(m.group(0)), out)
    return _CONTROL_RE.sub(ctl, out)


def box_line(text: Any, limit: int = MAX_LINE_CHARS) -> str:
    """One line of box text for a message: cleaned, newlines folded, cut to ``limit``."""
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return clean(" ".join(s.split("\n")).strip(), limit=limit)


_UNFINISHED_RE = re.compile(
    r"\x1b|\x1b[\x20-\x2f]+|(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*\x1b?")


def _unfinished(tail: str) -> bool:
    """True when ``tail`` is the start of an escape sequence whose end has not arrived yet."""
    return _UNFINISHED_RE.fullmatch(tail) is not None


class TermFilter:
    """Streamed bytes (a log) to text safe for a terminal; a sequence cut between chunks waits for its end."""

    HOLD_MAX = 4096

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""

    def feed(self, data: bytes, final: bool = False) -> str:
        """The printable text for ``data``; keeps SGR colours and carriage returns (progress bars)."""
        text = self._held + self._dec.decode(data, final)
        self._held = ""
        if not final:
            i = max(text.rfind(c) for c in _INTRODUCERS)
            if i >= 0 and len(text) - i <= self.HOLD_MAX and _unfinished(text[i:]):
                text, self._held = text[:i], text[i:]
        return clean(text, keep_sgr=True, keep_cr=True)


# -- bounded parsing ---------------------------------------------------------------------------------------------

def _bounds(obj: Any, what: str) -> None:
    """Depth and node count, walked without recursion."""
    stack: List[Tuple[Any, int]] = [(obj, 1)]
    nodes = 0
    while stack:
        o, d = stack.pop()
        nodes += 1
        if d > MAX_DEPTH:
            raise BoxDataError(f"malformed {what} from the box: nested deeper than {MAX_DEPTH} levels")
        if nodes > MAX_NODES:
            raise BoxDataError(f"malformed {what} from the box: more than {MAX_NODES} values")
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)


def loads(raw: bytes, what: str, max_bytes: int) -> Any:
    """JSON from the box within ``max_bytes``, depth and node limits; BoxDataError otherwise."""
    if len(raw) > max_bytes:
        raise BoxDataError(f"{what} from the box is over {max_bytes} bytes: refused (a real one is far smaller)")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise BoxDataError(f"malformed {what} from the box: nested too deeply") from None
    except (UnicodeDecodeError, ValueError):
        raise BoxDataError(f"{what} from the box is truncated or not JSON ({len(raw)} bytes); the agent may be "
                           "mid-write: try again") from None
    _bounds(obj, what)
    return obj


# -- schema types -------------------------------------------------------------------------------------------------

def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _check(value: Any, hint: Any, where: str) -> Optional[str]:
    """None when ``value`` fits the type ``hint``; else the dotted field that does not."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(value, inner[0], where) if len(inner) == 1 else None
    if dataclasses.is_dataclass(hint):
        return _check_object(value, hint, where)
    if origin in (list, List):
        if not isinstance(value, list) or len(value) > MAX_LIST:
            return f"{where} (expected a list, got {_type_name(value)})"
        return next((e for i, v in enumerate(value) if (e := _check(v, args[0], f"{where}[{i}]"))), None)
    if origin in (dict, Dict):
        return None if isinstance(value, dict) else f"{where} (expected an object, got {_type_name(value)})"
    if hint is bool:
        return None if isinstance(value, bool) else f"{where} (expected true/false, got {_type_name(value)})"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) < MAX_INT
        return None if ok else f"{where} (expected a whole number, got {_type_name(value)})"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and (where.endswith(("_at", "start_time"))) and not 0 <= value <= MAX_TIME_S:
            ok = False
        return None if ok else f"{where} (expected a finite number, got {_type_name(value)} {value!r:.40})"
    if hint is str:
        return None if isinstance(value, str) else f"{where} (expected text, got {_type_name(value)})"
    return None


def _check_object(value: Any, kind: Any, where: str, require: bool = True) -> Optional[str]:
    if not isinstance(value, dict):
        return f"{where} (expected an object, got {_type_name(value)})"
    hints = typing.get_type_hints(kind)
    for f in dataclasses.fields(kind):
        key = "class" if f.name == "class_" else f.name
        prefix = f"{where}.{key}" if where else key
        if key not in value:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and require:
                return f"{prefix} (missing)"
            continue
        bad = _check(value[key], hints[f.name], prefix)
        if bad:
            return bad
    return None


def status_from_box(raw: bytes, run_id: Optional[str], source: str = "status.json") -> Any:
    """A validated Status for ``run_id`` (None: any run) from status.json bytes; BoxDataError names the field."""
    from rgt.shared.status import SCHEMA_VERSION, Status, parse_status

    d = loads(raw, "status.json", MAX_STATUS_BYTES)
    if not isinstance(d, dict):
        raise BoxDataError(f"malformed status.json from the box: not an object ({source})")
    version = d.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        return parse_status(raw, source)  # its one line says: upgrade rgt on this machine
    bad = _check_object(d, Status, "")
    if bad:
        raise BoxDataError(f"malformed status.json from the box: field {clean(bad, limit=200)}")
    if run_id is not None and d.get("run_id") != run_id:
        raise BoxDataError(f"status.json on the box is for run {box_line(repr(d.get('run_id')), 80)}, "
                           f"not {run_id}: refused")
    return parse_status(raw, source)


def stored_status(d: Any) -> Optional[Dict[str, Any]]:
    """A status kept in the registry (maybe by an older rgt that did not check it): itself when valid, else None."""
    from rgt.shared.status import Status

    if not isinstance(d, dict):
        return None
    try:
        _bounds(d, "status")
    except BoxDataError:
        return None
    return None if _check_object(d, Status, "", require=False) else d  # what is there must be well-typed


def shown(obj: Any) -> Any:
    """A copy of parsed box data with every string cleaned for display (keys too)."""
    if isinstance(obj, str):
        return clean(obj, limit=MAX_VALUE_CHARS)
    if isinstance(obj, dict):
        return {shown(k) if isinstance(k, str) else k: shown(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shown(v) for v in obj]
    return obj


# -- the journal ---------------------------------------------------------------------------------------------------

class BoxJournal(NamedTuple):
    """Journal records that passed, notes about what was dropped, and the torn tail's size."""

    records: List[Dict[str, Any]]
    notes: List[str]
    torn_bytes: int


def _plain(v: Any, depth: int = 0) -> Any:
    """A journal value as JSON-able data: text keys, finite numbers, bytes and extension types as text."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v if abs(v) < MAX_INT else str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (dict, list, tuple)) and depth >= MAX_DEPTH:
        return "<nested too deeply>"
    if isinstance(v, dict):
        return {str(k): _plain(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x, depth + 1) for x in v]
    if isinstance(v, bytes):
        return v[:MAX_VALUE_CHARS].decode("utf-8", "replace")
    return type(v).__name__  # a msgpack extension type: its name, never its repr


def journal_from_box(data: bytes) -> BoxJournal:
    """Parse journal bytes within limits; a record's bad field is dropped with a note, never raised."""
    import msgpack

    notes: List[str] = []
    if len(data) > MAX_JOURNAL_BYTES:
        notes.append(f"the journal is over {MAX_JOURNAL_BYTES} bytes: only its first part is shown")
        data = data[:MAX_JOURNAL_BYTES]
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    records: List[Dict[str, Any]] = []
    good = 0
    while len(records) < MAX_JOURNAL_RECORDS:
        try:
            obj = unpacker.unpack()
        except msgpack.OutOfData:
            break
        except (ValueError, TypeError, msgpack.UnpackException):  # garbage, a cut record, an unhashable key
            break
        good = unpacker.tell()
        if not isinstance(obj, dict):
            notes.append(f"journal record {len(records) + 1}: not a map, dropped")
            continue
        records.append(_record(obj, len(records) + 1, notes))
    else:
        notes.append(f"the journal has more than {MAX_JOURNAL_RECORDS} records: only the first are shown")
        good = len(data)
    return BoxJournal(records, notes[:50] + ([f"and {len(notes) - 50} more notes"] if len(notes) > 50 else []),
                      len(data) - good)


def _record(obj: Dict[Any, Any], n: int, notes: List[str]) -> Dict[str, Any]:
    rec: Dict[str, Any] = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            notes.append(f"journal record {n}: a key that is not text, dropped")
            continue
        rec[k] = _plain(v)
    t = rec.get("t")
    if "t" in rec and not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= MAX_TIME_S):
        notes.append(f"journal record {n}: field t is not a time ({clean(repr(t), limit=40)}), dropped")
        del rec["t"]
    if "kind" in rec and not isinstance(rec["kind"], str):
        notes.append(f"journal record {n}: field kind is not text, dropped")
        del rec["kind"]
    return rec


# -- the status --watch stream ------------------------------------------------------------------------------------

def watch_records(stream: Any, mark: bytes,
                  max_bytes: int = MAX_STATUS_BYTES) -> Iterator[Tuple[bytes, Optional[float], int]]:
    """(body, box clock or None, cat's exit code) for each record framed by ``mark`` (a per-session nonce).

    A body over ``max_bytes`` without a mark ends the stream with BoxDataError; a garbled mark line gives
    a record with rc 1 and no clock, which the caller shows as unreadable, never a crash.
    """
    buf = b""
    for chunk in iter(lambda: stream.read1(65536), b""):
        buf += chunk
        while True:
            i = buf.find(mark)
            j = buf.find(b"\n", i + len(mark)) if i >= 0 else -1
            if j < 0:
                if len(buf) > max_bytes + len(mark) + 64:
                    raise BoxDataError(f"status stream from the box: a record over {max_bytes} bytes: refused")
                break
            words = buf[i + len(mark):j].split()
            try:
                now: Optional[float] = float(words[0])
                rc = int(words[1]) if len(words) > 1 else 1
                if not math.isfinite(now):
                    now, rc = None, 1
            except (ValueError, IndexError):
                now, rc = None, 1
            yield buf[:i], now, rc
            buf = buf[j + 1:]
