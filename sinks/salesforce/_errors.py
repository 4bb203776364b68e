"""Salesforce failures grouped by what to do about them (reference/salesforce-api.md §5).

Collections answer HTTP 200 with per-record errors; whole-call failures arrive as
simple-salesforce exceptions. 403 is both "allocation spent" (REQUEST_LIMIT_EXCEEDED:
back-pressure, never dead-letter) and "not allowed" (fatal): the errorCode decides.
"""

from __future__ import annotations

from typing import Any

import requests
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
)

from frontforce.errors import BackPressure, FatalError, InvalidRecordError, RetriableError

RETRIABLE_ITEM_CODES = frozenset({
    "UNABLE_TO_LOCK_ROW",
    "SERVER_UNAVAILABLE",
    "REQUEST_RUNNING_TOO_LONG",
    "QUERY_TIMEOUT",
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
})

# How long to stand back when the daily allocation is spent; the sink re-reads usage then.
LIMIT_BACKOFF_S = 60.0


class SessionExpired(RetriableError):
    """401 INVALID_SESSION_ID: log in again, then retry."""


class BatchRejected(InvalidRecordError):
    """The whole request was refused as malformed: unroll and find the bad record."""


def _codes(content: Any) -> list[str]:
    if isinstance(content, list):
        return [str(e.get("errorCode", "")) for e in content if isinstance(e, dict)]
    return []


def classify_item_error(errors: list[dict[str, Any]]) -> tuple[bool, str]:
    """(retriable?, reason) for one record's ``errors`` in a collections response."""
    codes = [str(e.get("statusCode", "")) for e in errors]
    reason = "; ".join(
        f"{e.get('statusCode')}: {e.get('message')}"
        + (f" (fields: {', '.join(e['fields'])})" if e.get("fields") else "")
        for e in errors
    ) or "unknown error"
    return (bool(codes) and all(c in RETRIABLE_ITEM_CODES for c in codes)), reason


def classify_call_error(exc: BaseException) -> Exception:
    """Map an exception from one REST call to the frontforce error family."""
    if isinstance(exc, SalesforceRefusedRequest):
        if "REQUEST_LIMIT_EXCEEDED" in _codes(exc.content):
            return BackPressure("salesforce API allocation exceeded", LIMIT_BACKOFF_S)
        return FatalError(f"salesforce refused the request: {exc.content!r}")
    if isinstance(exc, SalesforceExpiredSession):
        return SessionExpired("salesforce session expired")
    if isinstance(exc, SalesforceMalformedRequest):
        return BatchRejected(f"salesforce rejected the request: {exc.content!r}")
    if isinstance(exc, SalesforceGeneralError):
        if exc.status >= 500:
            return RetriableError(f"salesforce HTTP {exc.status}: {exc.content!r}")
        return InvalidRecordError(f"salesforce HTTP {exc.status}: {exc.content!r}")
    if isinstance(exc, requests.RequestException):
        return RetriableError(f"salesforce unreachable: {type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))
