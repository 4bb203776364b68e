"""Front's error shape (fact sheet §5): ``{"_error": {"status", "title", "message"?, "details"?}}``.

Handlers raise ``FrontError``; the HTTP edge renders it. Titles follow the HTTP reason phrases
Front uses in its documented examples ("Not found", "Conflict", "Too many requests").
"""

from __future__ import annotations

from typing import Any

__all__ = ["FrontError", "bad_request", "conflict", "error_body", "not_found"]

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


def error_body(status: int, message: str | None = None,
               details: list[str] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"status": status, "title": _TITLES.get(status, "Error")}
    if message:
        err["message"] = message
    if details:
        err["details"] = details
    return {"_error": err}


class FrontError(Exception):
    def __init__(self, status: int, message: str | None = None,
                 details: list[str] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.details)


def not_found(what: str = "resource") -> FrontError:
    return FrontError(404, f"Unknown {what}")


def bad_request(message: str, details: list[str] | None = None) -> FrontError:
    return FrontError(400, message, details)


def conflict(message: str) -> FrontError:
    return FrontError(409, message)
