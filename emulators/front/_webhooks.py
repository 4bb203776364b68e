"""Deliver events the way Front does (reference/front-api.md §7): application webhooks
with an envelope, ``x-front-request-timestamp`` (epoch ms) and a base64 HMAC-SHA256 over
``timestamp:body``; rule webhooks with the bare event and a base64 HMAC-SHA1 over the body
(no timestamp). At least once: non-2xx or a timeout is retried (3 times by default), and a
delivery can be duplicated on purpose to exercise the receiver's idempotency."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["WebhookEmitter", "sign_app", "sign_rule"]


def sign_app(secret: bytes, timestamp_ms: str, body: bytes) -> str:
    return base64.b64encode(
        hmac.new(secret, timestamp_ms.encode() + b":" + body, hashlib.sha256).digest()).decode()


def sign_rule(secret: bytes, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret, body, hashlib.sha1).digest()).decode()


@dataclass
class WebhookEmitter:
    url: str
    app_secret: bytes  # the app secret, or the Webhooks app "API secret" when kind == "rule"
    company_id: str = "cmp_k30"
    retries: int = 3
    duplicate_rate: float = 0.0
    timeout_s: float = 5.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    # "app": envelope + SHA-256 over "ts:body"; "rule": bare event + SHA-1 over the body.
    kind: str = "app"
    # First retry delay; doubles per attempt, capped at 2 s.
    backoff_s: float = 0.2
    delivered: int = 0
    attempts: int = 0
    duplicates: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("app", "rule"):
            raise ValueError(f"webhook kind must be 'app' or 'rule', not {self.kind!r}")
        self._client = httpx.Client(timeout=self.timeout_s)

    def close(self) -> None:
        self._client.close()

    def _post(self, body: bytes, extra: dict[str, str] | None = None,
              timestamp_ms: str | None = None) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if self.kind == "rule":
            headers["x-front-signature"] = sign_rule(self.app_secret, body)
        else:
            ts = timestamp_ms or str(int(time.time() * 1000))
            headers["x-front-request-timestamp"] = ts
            headers["x-front-signature"] = sign_app(self.app_secret, ts, body)
        headers.update(extra or {})
        return self._client.post(self.url, content=body, headers=headers)

    def register(self) -> str:
        """The validation handshake Front performs when an application webhook is saved:
        a signed ``sync`` body with ``x-front-challenge``; the receiver must echo the value
        (text, form ``challenge=…`` or JSON ``{"challenge": …}`` all contain it). Rule
        webhooks have no handshake: returns ""."""
        if self.kind == "rule":
            return ""
        challenge = base64.urlsafe_b64encode(self.rng.randbytes(18)).decode()
        body = json.dumps({"type": "sync", "authorization": {"id": self.company_id}}).encode()
        resp = self._post(body, {"x-front-challenge": challenge})
        if resp.status_code != 200 or challenge not in resp.text:
            raise RuntimeError(f"challenge not echoed: HTTP {resp.status_code} {resp.text[:100]}")
        return challenge

    def envelope(self, event: dict[str, Any], kind: str = "inbound_received") -> bytes:
        return json.dumps({"type": kind, "authorization": {"id": self.company_id},
                           "payload": event}).encode()

    def body_for(self, event: dict[str, Any], kind: str = "inbound_received") -> bytes:
        """The exact bytes sent (and signed) for ``event``."""
        return json.dumps(event).encode() if self.kind == "rule" else self.envelope(event, kind)

    def deliver(self, event: dict[str, Any], kind: str = "inbound_received") -> int:
        """Deliver with retries; maybe deliver twice. Returns the last status code."""
        body = self.body_for(event, kind)
        status = self._deliver_once(body)
        if self.duplicate_rate and self.rng.random() < self.duplicate_rate:
            self.duplicates += 1
            status = self._deliver_once(body)
        return status

    def _deliver_once(self, body: bytes) -> int:
        status = 0
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                status = self._post(body).status_code
            except httpx.HTTPError:
                status = 0
            if 200 <= status < 300:
                self.delivered += 1
                return status
            if attempt < self.retries:
                time.sleep(min(2.0, self.backoff_s * 2 ** attempt))
        self.failures += 1
        return status
