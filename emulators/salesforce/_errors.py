"""Salesforce error shapes (fact sheet §5.1).

Single-resource errors are a JSON *array* of ``{message, errorCode, fields}``; collection
items use ``statusCode`` instead of ``errorCode``; the OAuth endpoint uses ``{error,
error_description}``. Handlers raise ``SfError`` and the edges render the right shape.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SfError", "not_found", "malformed_query", "invalid_field", "invalid_type"]


class SfError(Exception):
    """A Salesforce API error with its HTTP status and errorCode."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        # Room for richer payloads (e.g. duplicateResut for DUPLICATES_DETECTED faults).
        self.extra = extra or {}

    def rest_body(self) -> list[dict[str, Any]]:
        item: dict[str, Any] = {**self.extra, "message": self.message, "errorCode": self.code}
        if self.fields is not None:
            item["fields"] = self.fields
        return [item]

    def item_error(self) -> dict[str, Any]:
        """Per-record error inside collections/SaveResult bodies (note: ``statusCode``)."""
        return {"statusCode": self.code, "message": self.message, "fields": self.fields or []}


def not_found(message: str = "The requested resource does not exist") -> SfError:
    return SfError(404, "NOT_FOUND", message)


def malformed_query(message: str) -> SfError:
    return SfError(400, "MALFORMED_QUERY", message)


def invalid_field(message: str, fields: list[str] | None = None) -> SfError:
    return SfError(400, "INVALID_FIELD", message, fields)


def invalid_type(name: str) -> SfError:
    return SfError(
        400,
        "INVALID_TYPE",
        f"sObject type '{name}' is not supported. If you are attempting to use a custom "
        "object, be sure to append the '__c' after the entity name. Please reference your "
        "WSDL or the describe call for the appropriate names.",
    )
