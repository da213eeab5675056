"""Webhooks from the box (generic JSON, Slack, Discord, ntfy): journaled first, delivered by a thread, retried."""

from __future__ import annotations

import http.client
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Dict, List, Optional

from rgt.shared.journal import Journal, read_journal
from rgt.shared.paths import RunPaths
from rgt.shared.secrets import load_secrets
from rgt.shared.spec import RunSpec
from rgt.shared.states import RunState

FORMATS = ("json", "slack", "discord", "ntfy")
TIMEOUT_S = 10.0
RETRY_MAX_S = 300.0
GIVE_UP_AFTER_S = 24 * 3600.0  # a payload older than this is dropped (journaled), never retried forever
LINGER_S = 3600.0  # after the run's end, how long the agent stays to deliver what is pending
JOB_LINGER_S = 60.0  # inside a scheduler's job the allocation would be held: linger briefly


def render(fmt: str, payload: Dict[str, Any]) -> tuple:
    """(body bytes, headers) for one payload in the chosen format."""
    text = payload["text"]
    if fmt == "slack":
        return json.dumps({"text": text}).encode(), {"Content-Type": "application/json"}
    if fmt == "discord":
        return json.dumps({"content": text[:2000]}).encode(), {"Content-Type": "application/json"}
    if fmt == "ntfy":
        return text.encode(), {"Title": f"rgt {payload['run_id']}: {payload['event']}", "Content-Type": "text/plain"}
    return json.dumps(payload, sort_keys=True).encode(), {"Content-Type": "application/json"}


class Notifier:
    """Never blocks the agent's loop: ``event`` journals and enqueues; a daemon thread posts."""

    def __init__(self, spec: RunSpec, paths: RunPaths, journal: Journal, log: logging.Logger) -> None:
        self.spec, self.paths, self.journal, self.log = spec, paths, journal, log
        self.fmt = spec.notify.get("format", "json")
        if self.fmt not in FORMATS:
            log.warning("notify format %r unknown; using json", self.fmt)
            self.fmt = "json"
        self.secret_name = spec.notify.get("webhook_secret")
        self.queue: queue.Queue[Dict[str, Any]] = queue.Queue()
        self.pending = 0
        self.lock = threading.Lock()
        self.critical_seen: set = set()
        for item in self._undelivered():
            self._enqueue(item)
        self.thread = threading.Thread(target=self._deliver_loop, name="rgt-notify", daemon=True)
        self.thread.start()

    # -- what the agent calls --------------------------------------------------------------------
    def event(self, event: str, text: str, **fields: Any) -> None:
        """Journal a notification (the journal is the retry queue) and hand it to the thread."""
        payload = {"id": uuid.uuid4().hex, "event": event, "run_id": self.spec.run_id,
                   "text": f"[rgt] {self.spec.run_id}: {event}: {text}", "at": time.time()}
        payload.update(fields)
        self.journal.append("notify", payload=payload)
        self._enqueue(payload)

    def final(self, state: RunState, reason: str, failure: Any) -> None:
        """Succeeded / failed (with class and remediation) / stopped."""
        fields: Dict[str, Any] = {"state": state.value}
        text = reason
        if state == RunState.FAILED and failure is not None:
            fields.update({"class": failure.class_, "remediation": failure.remediation})
            text = f"{reason}. Remediation: {failure.remediation}"
        self.event(state.value, text, **fields)

    def critical(self, alert: Any) -> None:
        """A critical sentinel, once per sentinel and code until the agent restarts."""
        key = (alert.name, alert.code)
        if key in self.critical_seen:
            return
        self.critical_seen.add(key)
        self.event("critical", alert.message or alert.name, sentinel=alert.name, code=alert.code)

    def close(self, linger_s: Optional[float] = None) -> None:
        """Stay until every notification is delivered, at most ``linger_s`` (1 h; 60 s inside a job).

        The run's marker is already written and agent.lock released when this is called, so a
        `rgt resume` is never blocked by it; the journal keeps what could not be sent, and the next
        agent of this run sends it.
        """
        if linger_s is None:
            linger_s = JOB_LINGER_S if os.environ.get("RGT_JOB_SCHEDULER") else LINGER_S
        deadline = time.monotonic() + linger_s
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.2)

    # -- delivery --------------------------------------------------------------------------------
    def _undelivered(self) -> List[Dict[str, Any]]:
        records = read_journal(self.paths.journal).records
        sent = {r.get("id") for r in records if r.get("kind") == "notify_sent"}
        return [r["payload"] for r in records
                if r.get("kind") == "notify" and r.get("payload", {}).get("id") not in sent
                and time.time() - r.get("t", 0) < GIVE_UP_AFTER_S]

    def _enqueue(self, payload: Dict[str, Any]) -> None:
        with self.lock:
            self.pending += 1
        self.queue.put(payload)

    def _url(self) -> Optional[str]:
        # Read at each delivery: `rgt secrets push` may set or fix the URL while the run goes.
        return load_secrets(self.paths.secrets).get(self.secret_name or "")

    def _opener(self) -> urllib.request.OpenerDirector:
        """The profile's proxy for our own calls; never taken from (or put into) the agent's env."""
        from . import platform_env

        env = platform_env.trainer_env({}, self.spec.extra.get("platform_env") or {}, base_env={})
        proxies = {k: env[v] for k, v in (("http", "http_proxy"), ("https", "https_proxy")) if env.get(v)}
        return urllib.request.build_opener(urllib.request.ProxyHandler(proxies))

    def _post(self, payload: Dict[str, Any]) -> Optional[str]:
        """None when delivered, else why not, in words that never contain the URL (it is a secret)."""
        url = self._url()
        if not url:
            return f"no webhook URL in secrets.env under {self.secret_name!r}"
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            return f"the webhook URL in {self.secret_name} is not http(s)://..."
        body, headers = render(self.fmt, payload)
        try:
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with self._opener().open(req, timeout=TIMEOUT_S) as resp:
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}"
        except (OSError, ValueError, http.client.HTTPException) as e:
            # Their messages can quote the URL: say only what kind of failure it was.
            return f"{type(e).__name__} reaching {urllib.parse.urlsplit(url).hostname or 'the webhook'}"

    def _deliver_loop(self) -> None:
        while True:
            payload = self.queue.get()
            try:
                self._deliver(payload)
            finally:
                with self.lock:
                    self.pending -= 1

    def _deliver(self, payload: Dict[str, Any]) -> None:
        delay = 1.0
        deadline = payload.get("at", time.time()) + GIVE_UP_AFTER_S
        while time.time() < deadline:
            error = self._post(payload)
            if error is None:
                self.journal.append("notify_sent", id=payload["id"])
                return
            self.log.warning("notification %s not delivered (%s); retrying in %.0fs", payload["event"], error, delay)
            time.sleep(delay)
            delay = min(float(self.spec.notify.get("retry_max_s", RETRY_MAX_S)), delay * 2)
        self.journal.append("notify_dropped", id=payload["id"], after_s=GIVE_UP_AFTER_S)
