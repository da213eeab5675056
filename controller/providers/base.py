"""The shared HTTP client for provider APIs (laptop): bearer key, timeouts, bounded retries, a destroy that is proven.

A provider's answer to DELETE is not proof. `destroy_and_confirm` polls the instance until the provider says
it is gone, re-asks before it retries a destroy whose answer never came, and every failure says that the
box may still be billing.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Callable, Optional

import requests

from rgt.shared.errors import BadInput, RgtError, TransportError

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
RETRY_STATUS = (429, 500, 502, 503, 504)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class ProviderError(RgtError):
    """The provider answered with an error (exit 1)."""


class ProviderTimeout(TransportError):
    """The provider did not answer in time, or the instance never showed as gone (exit 3)."""


class Provider:
    """One provider's REST API. Subclasses give the paths and the meaning of their JSON."""

    name = ""
    display = ""
    key_env = ""
    url_env = ""
    default_url = ""
    verb = "destroy"
    console = ""

    def __init__(self, key: str, base_url: str, timeout_s: Optional[float] = None, attempts: Optional[int] = None,
                 backoff_s: Optional[float] = None, session: Optional[requests.Session] = None) -> None:
        self._key = key
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s if timeout_s is not None else _env_float("RGT_API_TIMEOUT_S", 20.0)
        self.attempts = attempts if attempts is not None else max(1, int(_env_float("RGT_API_ATTEMPTS", 4)))
        self.backoff_s = backoff_s if backoff_s is not None else _env_float("RGT_API_BACKOFF_S", 1.0)
        self.session = session or requests.Session()
        self.sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"  # never the key

    # -- what subclasses provide ----------------------------------------------------------------
    def show(self, instance_id: str) -> Optional[dict]:
        """The instance's record, or None when the provider no longer knows it."""
        raise NotImplementedError

    def destroy(self, instance_id: str) -> None:
        """Ask the provider to destroy the instance (the answer is not proof)."""
        raise NotImplementedError

    def is_gone(self, inst: Optional[dict], after_destroy: bool) -> bool:
        """Whether ``inst`` (from show) means the instance no longer bills compute."""
        raise NotImplementedError

    def state_of(self, inst: Optional[dict]) -> str:
        """A short state for messages."""
        raise NotImplementedError

    def billables(self) -> list[str]:
        """One line per thing on the account that keeps billing after the destroy (volumes)."""
        raise NotImplementedError

    # -- HTTP ------------------------------------------------------------------------------------
    @staticmethod
    def check_id(instance_id: str) -> str:
        """Refuse an instance id that could change the request path."""
        if not ID_RE.match(str(instance_id)):
            raise BadInput(f"bad instance id {instance_id!r}: use the id the provider shows (letters, digits, - _)")
        return str(instance_id)

    def request(self, method: str, path: str, params: Optional[dict] = None, body: Any = None,
                missing_ok: bool = False) -> tuple[int, Any]:
        """(status, JSON or None). Retries timeouts, resets, 429 and 5xx with backoff; 401/403 never."""
        url = self.base_url + path
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}
        last = "no answer"
        timed_out = False
        for attempt in range(1, self.attempts + 1):
            wait_s = self.backoff_s * 2 ** (attempt - 1)
            try:
                r = self.session.request(method, url, params=params, json=body, headers=headers,
                                         timeout=(min(10.0, self.timeout_s), self.timeout_s))
            except requests.Timeout:
                last, timed_out = f"no answer within {self.timeout_s:.0f}s", True
            except requests.ConnectionError as e:
                last, timed_out = f"connection failed ({type(e).__name__})", True
            else:
                if r.status_code in (401, 403):
                    raise ProviderError(f"the {self.display} API refused the key (HTTP {r.status_code}): "
                                        f"check {self.key_env}")
                if r.status_code == 404 and missing_ok:
                    return 404, None
                if r.status_code in RETRY_STATUS:
                    last, timed_out = f"HTTP {r.status_code}{_why(r)}", False
                    wait_s = max(wait_s, _retry_after(r))
                elif r.status_code >= 400:
                    raise ProviderError(f"the {self.display} API answered {method} {path} with HTTP "
                                        f"{r.status_code}{_why(r)}")
                else:
                    return r.status_code, _json(r)
            if attempt < self.attempts:
                self.sleep(min(wait_s, 30.0))
        cls = ProviderTimeout if timed_out else ProviderError
        raise cls(f"the {self.display} API did not complete {method} {path} after {self.attempts} tries ({last})")


def _json(r: requests.Response) -> Any:
    if not r.content:
        return None
    try:
        return r.json()
    except ValueError:
        return None


def _why(r: requests.Response) -> str:
    body = _json(r)
    if isinstance(body, dict):
        msg = body.get("msg") or body.get("error") or body.get("message") or body.get("detail")
        if isinstance(msg, str) and msg:
            return f": {msg[:200]}"
    return ""


def _retry_after(r: requests.Response) -> float:
    try:
        return min(float(r.headers.get("Retry-After", 0)), 30.0)
    except ValueError:
        return 0.0


def destroy_and_confirm(p: Provider, instance_id: str, echo: Callable[[str], None],
                        timeout_s: Optional[float] = None, interval_s: Optional[float] = None,
                        clock: Callable[[], float] = time.monotonic) -> str:
    """Destroy ``instance_id`` and poll until the provider says it is gone; returns its last state.

    Every failure is raised with the warning that the box may still bill.
    """
    instance_id = p.check_id(instance_id)
    timeout_s = timeout_s if timeout_s is not None else _env_float("RGT_DESTROY_TIMEOUT_S", 600.0)
    interval_s = interval_s if interval_s is not None else _env_float("RGT_DESTROY_POLL_S", 5.0)
    warn = (f"{p.display} instance {instance_id} may still be billing: check it in {p.console} "
            f"and {p.verb} it there if it is still listed")
    try:
        before = p.show(instance_id)
        if p.is_gone(before, after_destroy=False):
            echo(f"{p.display} instance {instance_id} is already gone ({p.state_of(before)})")
            return p.state_of(before)
        echo(f"{p.display}: {p.verb} instance {instance_id} (now {p.state_of(before)})")
        try:
            p.destroy(instance_id)
        except ProviderTimeout:
            # The destroy may have landed although its answer did not: ask before sending it again.
            if not p.is_gone(p.show(instance_id), after_destroy=True):
                p.destroy(instance_id)
        deadline = clock() + timeout_s
        while True:
            inst = p.show(instance_id)
            if p.is_gone(inst, after_destroy=True):
                echo(f"{p.display} instance {instance_id} is gone ({p.state_of(inst)})")
                return p.state_of(inst)
            if clock() >= deadline:
                raise ProviderTimeout(f"{p.display} instance {instance_id} still shows {p.state_of(inst)} "
                                      f"{timeout_s:.0f}s after the {p.verb}")
            p.sleep(interval_s)
    except ProviderTimeout as e:
        raise ProviderTimeout(f"{e}; {warn}") from None
    except ProviderError as e:
        raise ProviderError(f"{e}; {warn}") from None
