"""TOML tables into frozen dataclasses; errors name the file, the line and the field (controller side)."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, NoReturn

import tomllib

from rgt.shared.errors import BadInput

FieldPath = tuple  # a field's path in the document: ("danger_clocks", 1, "duration_s")

_HEADER = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=")
_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_IDENT = re.compile(r"[a-z][a-z0-9_]*\Z")
_MONTH = re.compile(r"20\d\d-(0[1-9]|1[0-2])\Z")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}(/\d{1,2})?\Z")


def dotted(path: FieldPath) -> str:
    """``("danger_clocks", 1, "name")`` as ``danger_clocks[1].name``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def _scan(text: str) -> tuple[dict[FieldPath, int], list[FieldPath]]:
    """Map each key path and table header to its first line; also the header in force on each line."""
    index: dict[FieldPath, int] = {}
    counts: dict[FieldPath, int] = {}
    current: FieldPath = ()
    per_line: list[FieldPath] = []
    for no, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            parts = tuple(p.strip() for p in m.group(2).split("."))
            if m.group(1) == "[[":
                counts[parts] = counts.get(parts, -1) + 1
                current = (*parts, counts[parts])
            else:
                current = parts
            index.setdefault(current, no)
        else:
            k = _KEY.match(line)
            if k:
                index.setdefault(current + tuple(p.strip() for p in k.group(1).split(".")), no)
        per_line.append(current)
    return index, per_line


class Source:
    """The files one profile is merged from (base first); finds where a field is set for errors."""

    def __init__(self, files: list[tuple[str, str]]):
        self.files = files
        self._index = [(label, _scan(text)[0]) for label, text in files]

    def locate(self, path: FieldPath) -> tuple[str, int]:
        """The file and line that set ``path``, else its nearest enclosing table's header."""
        for cut in range(len(path), -1, -1):
            for label, index in reversed(self._index):
                if path[:cut] in index:
                    return label, index[path[:cut]]
        return self.files[-1][0], 1

    def fail(self, path: FieldPath, problem: str) -> NoReturn:
        """Raise the one-line BadInput: ``<file>:<line>: <field>: <problem>``."""
        label, line = self.locate(path)
        raise BadInput(f"{label}:{line}: {dotted(path)}: {problem}")


def parse_toml(label: str, text: str) -> dict[str, Any]:
    """tomllib, with a syntax error turned into the same one-line form (the key on that line as field)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _POSITION.search(msg)
        line, col = (int(m.group(1)), int(m.group(2))) if m else (len(text.splitlines()) or 1, 1)
        lines = text.splitlines()
        here = lines[line - 1] if 0 < line <= len(lines) else ""
        key = _KEY.match(here)
        if here.lstrip().startswith("["):
            field = here.strip().strip("[]").strip() or "(toml)"
        elif key:
            field = dotted(_scan(text)[1][line - 1] + tuple(p.strip() for p in key.group(1).split(".")))
        else:
            field = "(toml)"
        problem = f"TOML syntax: {_POSITION.sub('', msg)} (column {col})"
        raise BadInput(f"{label}:{line}: {field}: {problem}") from None


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _convert(value: Any, tp: Any, path: FieldPath, src: Source) -> Any:
    tp, optional = _unwrap(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            src.fail(path, f"expected a table, got {_kind(value)}")
        return None if optional and not value else build(tp, value, path, src)
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(item):
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                src.fail(path, "expected an array of tables ([[...]])")
            return tuple(build(item, v, (*path, i), src) for i, v in enumerate(value))
        if typing.get_origin(item) is tuple:  # tuple[tuple[str, str], ...]: a table of strings
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                src.fail(path, f"expected a table of strings, got {_kind(value)}")
            return tuple(value.items())
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            src.fail(path, f"expected an array of strings, got {_kind(value)}")
        return tuple(value)
    ok = isinstance(value, tp) and (tp is bool) == isinstance(value, bool)
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        src.fail(path, f"expected {_kind(tp())}, got {_kind(value)}")
    if tp is str and optional and value == "":
        return None  # TOML has no null: "" means "none" for optional strings
    return float(value) if tp is float else value


def _check(value: Any, meta: typing.Mapping[str, Any], path: FieldPath, src: Source) -> None:
    """Field rules carried in ``dataclasses.field(metadata=...)``."""
    if value is None:
        return
    items = value if isinstance(value, tuple) else (value,)
    rules = [
        ("month", lambda v: bool(_MONTH.match(v)), "expected a month as \"YYYY-MM\""),
        ("ident", lambda v: bool(_IDENT.match(v)), "expected a lower_snake_case name"),
        ("path", lambda v: v.startswith(("/", "$")), "expected an absolute path (or one starting with $VAR)"),
        ("url", lambda v: v.startswith(("https://", "http://")), "expected an http(s):// URL"),
        ("env_names", lambda v: bool(_ENV_NAME.match(v if isinstance(v, str) else v[0])),
         "expected environment variable names"),
        ("nonneg", lambda v: v >= 0, "must be 0 or more"),
        ("positive", lambda v: v > 0, "must be more than 0"),
        ("no_proxy", lambda v: v == "localhost" or bool(_IPV4.match(v)) or (
            v.startswith(".") and "*" not in v and " " not in v and len(v) > 1),
         "entries are 127.0.0.1, localhost or leading-dot domains such as .example.com (no * wildcards)"),
    ]
    for key, ok, problem in rules:
        if meta.get(key):
            for v in items:
                if not ok(v):
                    src.fail(path, f"{problem}; got {v!r}")
    choices = meta.get("choices")
    if choices and any(v not in choices for v in items):
        src.fail(path, f"expected one of {', '.join(choices)}; got {value!r}")


def build(cls: type, table: dict[str, Any], path: FieldPath, src: Source,
          internal: dict[str, Any] | None = None) -> Any:
    """Validate ``table`` against dataclass ``cls``: known fields only, required ones present, right types.

    ``internal`` gives the fields marked ``metadata={"internal": True}``, which no file may set.
    """
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    names = [f.name for f in fields]
    for key in table:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            src.fail((*path, key), "unknown field" + (f" (did you mean {near[0]}?)" if near else ""))
    values = dict(internal or {})
    for f in fields:
        if f.name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                src.fail((*path, f.name), "missing required field")
            continue
        value = _convert(table[f.name], hints[f.name], (*path, f.name), src)
        _check(value, f.metadata, (*path, f.name), src)
        values[f.name] = value
    return cls(**values)
