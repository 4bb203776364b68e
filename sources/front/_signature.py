"""Front webhook signatures (reference/front-api.md §7).

Application webhooks: base64(HMAC-SHA256(app secret, "<x-front-request-timestamp>:" + raw
body)), timestamp in epoch milliseconds; we refuse stale timestamps so a captured request
cannot be replayed. Rule webhooks: base64(HMAC-SHA1(API secret, raw body)), no timestamp.
Always over the raw bytes, always a constant-time compare.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

# Epoch milliseconds: 13 digits today; 16 leaves room and keeps float conversion exact.
_TIMESTAMP = re.compile(r"[0-9]{1,16}")


class SignatureError(Exception):
    """The request is not provably from Front: answer 401."""


def sign_app_webhook(secret: bytes, timestamp_ms: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp_ms.encode() + b":" + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def sign_rule_webhook(secret: bytes, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret, body, hashlib.sha1).digest()).decode()


def verify_app_webhook(secret: bytes, timestamp: str | None, signature: str | None,
                       body: bytes, max_skew_s: float, now: float | None = None) -> None:
    if not signature or not timestamp:
        raise SignatureError("missing x-front-signature or x-front-request-timestamp")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("x-front-request-timestamp is not epoch milliseconds")
    ts_ms = int(timestamp)
    current = time.time() if now is None else now
    if abs(current - ts_ms / 1000.0) > max_skew_s:
        raise SignatureError("stale or future timestamp")
    _compare(sign_app_webhook(secret, timestamp, body), signature)


def _compare(expected: str, given: str) -> None:
    # compare_digest wants ASCII on both sides; a header with other characters cannot match.
    if not given.isascii() or not hmac.compare_digest(expected.encode(), given.strip().encode()):
        raise SignatureError("signature mismatch")


def verify_rule_webhook(secret: bytes, signature: str | None, body: bytes) -> None:
    if not signature:
        raise SignatureError("missing x-front-signature")
    _compare(sign_rule_webhook(secret, body), signature)
