"""Salesforce failures grouped by what to do about them (reference/salesforce-api.md §5).

Collections answer HTTP 200 with per-record errors; whole-call failures arrive as
simple-salesforce exceptions. 403 is both "allocation spent" (REQUEST_LIMIT_EXCEEDED:
back-pressure, never dead-letter) and "not allowed" (fatal): the errorCode decides.
A whole call refused because a field does not exist or is no external id is configuration,
not a bad record: fatal, never unrolled into one dead letter per record.
"""

from __future__ import annotations

import re
from typing import Any

import requests
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from frontforce.errors import (
    BackPressure,
    FatalError,
    FrontforceError,
    InvalidRecordError,
    RetriableError,
)

RETRIABLE_ITEM_CODES = frozenset({
    "UNABLE_TO_LOCK_ROW",
    "SERVER_UNAVAILABLE",
    "REQUEST_RUNNING_TOO_LONG",
    "QUERY_TIMEOUT",
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
})

# Whole-call answers that mean "this field (or resource) is not there": the configuration
# names something the org does not have, and every record of every batch would fail alike.
CONFIG_CALL_CODES = frozenset({"INVALID_FIELD", "NOT_FOUND"})

# "ConcurrentPerOrgLongTxn Limit exceeded." clears when the org's long requests finish,
# within seconds; only the daily allocation needs a re-read of /limits.
CONCURRENCY_BACKOFF_S = 5.0

# simple-salesforce's exception for an HTTP status (``util.exception_handler``).
_STATUS_EXCEPTIONS: dict[int, type[SalesforceError]] = {
    300: SalesforceMoreThanOneRecord,
    400: SalesforceMalformedRequest,
    401: SalesforceExpiredSession,
    403: SalesforceRefusedRequest,
    404: SalesforceResourceNotFound,
}

_DUPLICATE_ID = re.compile(r"with id:\s*([A-Za-z0-9]{15,18})")


class SessionExpired(RetriableError):
    """401 INVALID_SESSION_ID: log in again, then retry."""


class BatchRejected(InvalidRecordError):
    """The whole request was refused as malformed: unroll and find the bad record."""


class QuotaExceeded(BackPressure):
    """Salesforce refused a call for the daily allocation (403 REQUEST_LIMIT_EXCEEDED):
    pause until ``/limits`` shows room again."""


def _errors(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return [e for e in content if isinstance(e, dict)]
    return []


def _codes(content: Any) -> list[str]:
    return [str(e.get("errorCode", "")) for e in _errors(content)]


def _text(content: Any) -> str:
    errors = _errors(content)
    if not errors:
        return str(content)[:500]
    return "; ".join(f"{e.get('errorCode')}: {e.get('message')}" for e in errors)


def classify_item_error(errors: list[dict[str, Any]]) -> tuple[bool, str]:
    """(retriable?, reason) for one record's ``errors`` in a collections response."""
    codes = [str(e.get("statusCode", "")) for e in errors]
    reason = "; ".join(
        f"{e.get('statusCode')}: {e.get('message')}"
        + (f" (fields: {', '.join(e['fields'])})" if e.get("fields") else "")
        for e in errors
    ) or "unknown error"
    return (bool(codes) and all(c in RETRIABLE_ITEM_CODES for c in codes)), reason


def external_id_duplicate(errors: list[dict[str, Any]], field: str) -> bool:
    """True when a record failed only because another writer inserted the same external id
    first (unique index clash): the record exists, so the same upsert succeeds as an update."""
    if not errors:
        return False
    for e in errors:
        if e.get("statusCode") != "DUPLICATE_VALUE":
            return False
        named = [str(f).lower() for f in e.get("fields") or []]
        if field.lower() not in named and field.lower() not in str(e.get("message", "")).lower():
            return False
    return True


def unknown_field_item_error(errors: list[dict[str, Any]], field: str) -> bool:
    """A record refused because the external id field does not exist (a create names it in
    the record, so Salesforce answers per record where an upsert refuses the whole call)."""
    return bool(errors) and any(
        e.get("statusCode") in CONFIG_CALL_CODES
        and (field.lower() in [str(f).lower() for f in e.get("fields") or []]
             or field.lower() in str(e.get("message", "")).lower())
        for e in errors)


def duplicates_detected(errors: list[dict[str, Any]]) -> bool:
    """A duplicate rule (not a unique index) refused the record."""
    return bool(errors) and all(e.get("statusCode") == "DUPLICATES_DETECTED" for e in errors)


def duplicate_record_id(errors: list[dict[str, Any]]) -> str | None:
    """The id of the record a DUPLICATE_VALUE error points at, when the message names it."""
    for e in errors:
        m = _DUPLICATE_ID.search(str(e.get("message", "")))
        if m:
            return m.group(1)
    return None


def classify_call_error(exc: BaseException, external_id_field: str | None = None) -> Exception:
    """Map an exception from one REST call to the frontforce error family."""
    if isinstance(exc, FrontforceError):
        return exc
    if isinstance(exc, SalesforceRefusedRequest):
        if "REQUEST_LIMIT_EXCEEDED" in _codes(exc.content):
            if "ConcurrentPerOrgLongTxn" in _text(exc.content):
                return BackPressure("salesforce: too many long-running requests in the org",
                                    CONCURRENCY_BACKOFF_S)
            return QuotaExceeded(f"salesforce refused the call: {_text(exc.content)}", 0.0)
        return FatalError(f"salesforce refused the request: {_text(exc.content)}")
    if isinstance(exc, SalesforceExpiredSession):
        return SessionExpired("salesforce session expired")
    if isinstance(exc, SalesforceMalformedRequest | SalesforceResourceNotFound) and (
            CONFIG_CALL_CODES & set(_codes(exc.content))):
        hint = (f"; salesforce.task_external_id_field is {external_id_field!r}: it must be a field "
                "of Task marked External ID and Unique" if external_id_field else "")
        return FatalError(f"salesforce refused the whole call (HTTP {exc.status}): "
                          f"{_text(exc.content)}{hint}")
    if isinstance(exc, SalesforceResourceNotFound):
        return FatalError(f"salesforce has no such resource (HTTP 404): {_text(exc.content)}; "
                          "check salesforce.api_version and the org")
    if isinstance(exc, SalesforceGeneralError) and exc.status >= 500:
        return RetriableError(f"salesforce HTTP {exc.status}: {_text(exc.content)}")
    if isinstance(exc, SalesforceError):
        return BatchRejected(f"salesforce rejected the request (HTTP {exc.status}): {_text(exc.content)}")
    if isinstance(exc, requests.RequestException):
        return RetriableError(f"salesforce unreachable: {type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


def subrequest_error(status: int, content: Any, url: str,
                     external_id_field: str | None = None) -> Exception:
    """A /composite subrequest answered ``status`` with ``content``: the error the same
    request made alone would have raised, classified as ``classify_call_error`` does, so a
    flush sent as one composite call is handled as its requests sent one by one.
    ``PROCESSING_HALTED`` (collateral of another subrequest) is retriable."""
    if "PROCESSING_HALTED" in _codes(content):
        return RetriableError(f"salesforce halted a subrequest (HTTP {status}): {_text(content)}")
    exc = _STATUS_EXCEPTIONS.get(status, SalesforceGeneralError)(url, status, "composite", content)
    mapped = classify_call_error(exc, external_id_field)
    mapped.__cause__ = exc
    return mapped
