"""Webhook subscriptions and asynchronous delivery.

Events are queued when they are appended (under the state lock, never blocking an API call)
and a worker thread delivers them to every matching subscription with ``WebhookEmitter``:
signed with Front's algorithms, retried, optionally duplicated, optionally as previews.
Like Front, delivery is decoupled from the write that caused it, so a test waits with
``drain()`` (admin ``POST /__admin/webhooks/drain``) instead of assuming ordering.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import deque
from typing import Any

from emulators.front._events import app_webhook_type
from emulators.front._render import absolutize, preview_event
from emulators.front._store import FrontState
from emulators.front._webhooks import WebhookEmitter

__all__ = ["Dispatcher"]

# (event payload with relative links, subscriptions, company id, envelope type or None for
# the one mapped from the event type, replayed?)
_Item = tuple[dict[str, Any], list[dict[str, Any]], str, str | None, bool]

_SUB_DEFAULTS: dict[str, Any] = {"kind": "app", "types": None, "preview": False, "retries": 3,
                                 "duplicate_rate": 0.0, "timeout_s": 5.0, "backoff_s": 0.2}


class Dispatcher:
    def __init__(self, state: FrontState) -> None:
        self.state = state
        # Base URL for absolute links in payloads: the address clients last reached us on.
        self.base_url = "http://127.0.0.1"
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=1000)
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._emitters: dict[str, WebhookEmitter] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        state.publish = self.enqueue

    # ---- subscriptions -----------------------------------------------------------------

    def subscribe(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Validate and register; app webhooks must pass the challenge handshake first (Front
        refuses to save a webhook whose URL does not echo it). Not under the state lock: the
        handshake is an outbound HTTP call."""
        unknown = set(spec) - set(_SUB_DEFAULTS) - {"url", "secret", "handshake"}
        if unknown:
            raise ValueError(f"unknown webhook settings: {sorted(unknown)}")
        if not isinstance(spec.get("url"), str) or not isinstance(spec.get("secret"), str):
            raise ValueError("url and secret are required strings")
        sub = {**_SUB_DEFAULTS, **{k: v for k, v in spec.items() if k != "handshake"}}
        if sub["kind"] not in ("app", "rule"):
            raise ValueError("kind must be 'app' or 'rule'")
        with self.state.lock:
            sub["id"] = self.state.new_id("webhook")
            company_id = self.state.company["id"]
        emitter = self._emitter(sub, company_id)
        challenge = emitter.register() if spec.get("handshake", True) else ""
        with self.state.lock:
            self.state.subscriptions[sub["id"]] = sub
        return {**sub, "challenge": challenge}

    def unsubscribe(self, sub_id: str) -> bool:
        with self.state.lock:
            found = self.state.subscriptions.pop(sub_id, None) is not None
        emitter = self._emitters.pop(sub_id, None)
        if emitter is not None:
            emitter.close()
        return found

    def _emitter(self, sub: dict[str, Any], company_id: str) -> WebhookEmitter:
        emitter = self._emitters.get(sub["id"])
        if emitter is None:
            emitter = WebhookEmitter(
                sub["url"], sub["secret"].encode(), company_id=company_id,
                retries=int(sub["retries"]), duplicate_rate=float(sub["duplicate_rate"]),
                timeout_s=float(sub["timeout_s"]), kind=sub["kind"],
                backoff_s=float(sub["backoff_s"]), rng=random.Random(sub["id"]))
            self._emitters[sub["id"]] = emitter
        return emitter

    # ---- delivery ----------------------------------------------------------------------

    def enqueue(self, payload: dict[str, Any]) -> None:
        """``FrontState.publish`` hook; runs under the state lock, so it only queues."""
        self.replay(payload, replayed=False)

    def replay(self, payload: dict[str, Any], kind: str | None = None,
               only: str | None = None, replayed: bool = True) -> list[str]:
        """Queue ``payload`` (an event, relative links) for every matching subscription (or
        only subscription ``only``), as an app envelope of type ``kind`` (default: mapped
        from the event type). Under the state lock. Returns the subscription ids."""
        subs = [dict(s) for s in self.state.subscriptions.values()
                if (only is None or s["id"] == only)
                and (not s["types"] or payload["type"] in s["types"])]
        if subs:
            self._queue.put((payload, subs, self.state.company["id"], kind, replayed))
            self._start()
        return [s["id"] for s in subs]

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="front-webhooks",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                payload, subs, company_id, kind, replayed = item
                event = absolutize(payload, self.base_url)
                for sub in subs:
                    self._deliver(sub, company_id, event, kind, replayed)
            finally:
                self._queue.task_done()

    def _deliver(self, sub: dict[str, Any], company_id: str, event: dict[str, Any],
                 kind: str | None = None, replayed: bool = False) -> None:
        emitter = self._emitter(sub, company_id)
        emitter.company_id = company_id  # a seed may have given the company its recorded id
        before = (emitter.attempts, emitter.duplicates)
        body = preview_event(event) if sub["preview"] else event
        status = emitter.deliver(body, kind or app_webhook_type(event["type"]))
        self.deliveries.append({
            "subscription": sub["id"], "kind": sub["kind"], "event_id": event["id"],
            "event_type": event["type"], "status": status,
            "attempts": emitter.attempts - before[0],
            "duplicated": emitter.duplicates > before[1], "replayed": replayed,
            "at": time.time(),
        })

    def forget(self) -> None:
        """After a reset: drop emitters of subscriptions that no longer exist."""
        for sub_id in list(self._emitters):
            if sub_id not in self.state.subscriptions:
                self._emitters.pop(sub_id).close()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued event has been delivered (or given up on)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        with self._lock:
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(5)
        for emitter in self._emitters.values():
            emitter.close()
        self._emitters.clear()
