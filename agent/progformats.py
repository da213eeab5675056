"""Progress formats real trainers print (runs on the box, in the agent): one log segment in, what it says out.

Formats, each taken from the frameworks' real output (tests/fixtures/progress/, made by
tests/trainers/capture.py): Hugging Face Trainer's log dicts (bare or quoted numbers) and its tqdm bar,
Lightning's tqdm bar (per-epoch counter), nanoGPT's `iter N: loss X`, `Epoch [e/E] ... Step [i/N] ... Loss: x`,
and plain `step N/M loss X`. A bar that is not the training bar (saving, evaluating, downloading, map) never
moves the step. User patterns (spec.progress_patterns: step, loss, total) replace the built-ins by key.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Pattern, Tuple

USER_KEYS = ("step", "loss", "total")
NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf(?:inity)?)"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_HF_DICT = re.compile(r"\{'[\w/.-]+': ")
_HF_PAIR = re.compile(r"'([\w/.-]+)': '?(" + NUM + r")'?(?=[,}])", re.I)
# tqdm: "{desc}: {pct}%|{bar}| {n}/{total} [{elapsed}<{remaining}, {rate}{postfix}]"; no desc on HF's bar.
_BAR = re.compile(r"^\s*(?:(?P<desc>[^|\r\n]*?):?\s+)??(?:\d+%)?\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+|\?)\s*"
                  r"\[(?P<rest>[^\]]*)\]")
_POSTFIX = re.compile(r"([A-Za-z_][\w/.-]*)=(" + NUM + r")(?=[,\s]|$)", re.I)
_EPOCH_DESC = re.compile(r"^Epoch (\d+)(?:/\d+)?$")
_TRAIN_DESC = re.compile(r"\b(?:train\w*|steps?|iter\w*)\b", re.I)
_OTHER_DESC = re.compile(r"eval|valid|test|sanity|predict|writ|sav|load|download|upload|map|token|shard|filter|"
                         r"generat|\.\w+$", re.I)
_NANOGPT = re.compile(r"^iter (\d+): loss (" + NUM + r")", re.I)
_EPOCH_STEP = re.compile(r"\bEpoch\s*\[\s*(\d+)\s*/\s*(\d+)\s*\].*?\bStep\s*\[\s*(\d+)\s*/\s*(\d+)\s*\]"
                         r"(?:.*?\bLoss\s*[:=]?\s*(" + NUM + r"))?", re.I)
_STEP = re.compile(r"\b(?:global[_ ])?step[ =:]+(\d+)(?:\s*/\s*(\d+))?", re.I)
_LOSS = re.compile(r"\bloss[ =:]+(" + NUM + r")(?![\w.])", re.I)
_LOSS_KEYS = ("train_loss", "loss", "train_loss_step", "train/loss")


def compile_user(patterns: Optional[Dict[str, str]]) -> Dict[str, Pattern[str]]:
    """The user's patterns, compiled (the laptop checked them; check_pattern says what is wrong)."""
    out: Dict[str, Pattern[str]] = {}
    for key, text in (patterns or {}).items():
        if key not in USER_KEYS:
            continue  # keys of older specs (tqdm, hf) name built-ins that no longer take patterns
        try:
            out[key] = check_pattern(key, text)
        except BadPattern:
            continue  # checked on the laptop; one this box's older Python cannot compile falls back to built-ins
    return out


class BadPattern(ValueError):
    """A progress pattern that does not compile or captures nothing."""


def check_pattern(key: str, text: Any) -> Pattern[str]:
    """Compile one user pattern; it must have a capture group for the number."""
    if key not in USER_KEYS:
        raise BadPattern(f"progress pattern {key!r} is unknown (known: {', '.join(USER_KEYS)})")
    if not isinstance(text, str) or not text:
        raise BadPattern(f"progress pattern {key} must be a non-empty regex string")
    try:
        rx = re.compile(text)
    except re.error as e:
        raise BadPattern(f'progress pattern {key} = "{text}" is not a valid regex: {e}') from None
    if rx.groups < 1:
        raise BadPattern(f'progress pattern {key} = "{text}" needs a capture group around the number, '
                         f"e.g. {key} = \"{key}=(\\d+)\"")
    return rx


def num(text: str) -> Optional[float]:
    """A float from log text (nan and inf included), or None."""
    try:
        return float(text)
    except ValueError:
        return None


class Parsed:
    """What one segment said: step/total/loss (None: not said), metrics, and the loss as printed."""

    __slots__ = ("step", "total", "loss", "loss_text", "metrics")

    def __init__(self) -> None:
        self.step: Optional[int] = None
        self.total: Optional[int] = None
        self.loss: Optional[float] = None
        self.loss_text: Optional[str] = None
        self.metrics: Dict[str, Any] = {}

    def set_loss(self, text: str) -> None:
        """Take ``text`` as the loss when it is a number (nan and inf are)."""
        value = num(text)
        if value is not None:
            self.loss, self.loss_text = value, text

    def said(self) -> bool:
        """True when the segment said anything about progress."""
        return self.step is not None or self.total is not None or self.loss is not None or bool(self.metrics)


class BarLock:
    """Which tqdm bar is the training bar: the first training-like one, until it completes.

    A later bar takes over only after the locked one reached its total and only with a total at least as
    large (so HF's eval bar, 0/2 after a 12/12 training bar, never becomes the step).
    """

    def __init__(self) -> None:
        self.key: Optional[Tuple[str, str]] = None
        self.done = False

    def accept(self, kind: str, n: int, total: str) -> bool:
        """True when this bar is (now) the training bar."""
        if total == "?" and n == 0:
            return False  # "Training: 0/?" before the real bar: says nothing, locks nothing
        key = ("epoch", "") if kind == "epoch" else (kind, total)  # Lightning's epoch length is in the bar
        if self.key is None or key == self.key:
            self.key = key
            self.done = kind != "epoch" and total != "?" and n >= int(total)
            return True
        if self.done and total != "?" and self.key[1] not in ("", "?") and int(total) >= int(self.key[1]):
            self.key, self.done = key, n >= int(total)
            return True
        return False


def parse(line: str, user: Dict[str, Pattern[str]], lock: BarLock, state: Dict[str, Any]) -> Parsed:
    """One log segment (after the last carriage return) through the user's patterns and the built-ins."""
    out = Parsed()
    line = ANSI.sub("", line)
    if not line.strip():
        return out
    _builtin(line, lock, state, out)
    if user:
        _user(line, user, out)
    return out


def _user(line: str, user: Dict[str, Pattern[str]], out: Parsed) -> None:
    if "step" in user:
        out.step = None
        m = user["step"].search(line)
        if m and m.group(1) and m.group(1).isdigit():
            out.step = int(m.group(1))
            if user["step"].groups >= 2 and m.group(2) and m.group(2).isdigit():
                out.total = int(m.group(2))
    if "total" in user:
        m = user["total"].search(line)
        out.total = int(m.group(1)) if m and m.group(1) and m.group(1).isdigit() else out.total
    if "loss" in user:
        out.loss = out.loss_text = None
        m = user["loss"].search(line)
        if m and m.group(1):
            out.set_loss(m.group(1).strip())


def _builtin(line: str, lock: BarLock, state: Dict[str, Any], out: Parsed) -> None:
    hf = _HF_DICT.search(line)
    if hf:
        for key, value in _HF_PAIR.findall(line[hf.start():]):
            if key == "loss":
                out.set_loss(value)
            elif num(value) is not None:
                out.metrics[key] = num(value)
        return
    bar = _BAR.match(line)
    if bar:
        _bar(bar, lock, state, out)
        return
    m = _NANOGPT.match(line.strip())
    if m:
        out.step = int(m.group(1))
        out.set_loss(m.group(2))
        return
    m = _EPOCH_STEP.search(line)
    if m:
        e, epochs, i, per_epoch = (int(g) for g in m.groups()[:4])
        if e == 0:
            state["epoch_base"] = 0  # printed 0-based
        base = state.get("epoch_base", 1)
        out.step, out.total = (e - base) * per_epoch + i, epochs * per_epoch
        out.metrics.update(epoch=e, batch=i)
        if m.group(5):
            out.set_loss(m.group(5))
        return
    m = _STEP.search(line)
    if m:
        out.step = int(m.group(1))
        if m.group(2):
            out.total = int(m.group(2))
    m = _LOSS.search(line)
    if m:
        out.set_loss(m.group(1))


def _bar(bar: Any, lock: BarLock, state: Dict[str, Any], out: Parsed) -> None:
    desc = (bar.group("desc") or "").strip()
    n, total = int(bar.group("n")), bar.group("total")
    epoch = _EPOCH_DESC.match(desc)
    kind = "epoch" if epoch else "plain" if not desc else (
        "train" if _TRAIN_DESC.search(desc) and not _OTHER_DESC.search(desc) else None)
    if kind is None or not lock.accept(kind, n, total):
        return  # saving, evaluating, downloading, sanity checking, map: not the training bar
    postfix = dict(_POSTFIX.findall(bar.group("rest")))
    for key in _LOSS_KEYS:
        if key in postfix:
            out.set_loss(postfix.pop(key))
            break
    for key, value in postfix.items():
        if num(value) is not None and not key.startswith("train_loss"):
            out.metrics[key] = num(value)
    if kind != "epoch":
        out.step = n
        out.total = None if total == "?" else int(total)
        return
    # Lightning counts batches within the epoch; the global batch is epoch * batches_per_epoch + batch.
    e = int(epoch.group(1))
    out.metrics.update(epoch=e, batch=n)
    if total != "?":
        out.metrics["batches_per_epoch"] = int(total)
        step = e * int(total) + n
    elif e == 0:
        step = n
    else:
        return  # unknown epoch length: epoch and batch only, no global step
    if step < state.get("epoch_step_max", -1):
        out.metrics, out.loss, out.loss_text = {}, None, None
        return  # the bar's reset redraw ("Epoch 0: 0/10" just before "Epoch 1"): not a step back
    out.step = state["epoch_step_max"] = step
