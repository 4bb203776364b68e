"""Transport-neutral request/response types shared by the REST, composite and HTTP layers.

Composite subrequests are executed through the same handlers as top-level requests, so the
handlers work on ``SubRequest``/``Reply`` rather than on Starlette objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from emulators.salesforce._errors import SfError

__all__ = ["NO_BODY", "Reply", "SubRequest", "error_reply", "segments_from_path"]


class _NoBody:
    def __repr__(self) -> str:
        return "NO_BODY"


NO_BODY: Any = _NoBody()


@dataclass
class SubRequest:
    method: str
    segments: list[str]  # path segments after /services/data/vXX.X/, percent-decoded
    query: dict[str, list[str]] = field(default_factory=dict)
    body: Any = NO_BODY
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    # Set by /composite with allOrNone=true: nested collections must behave all-or-none too.
    force_all_or_none: bool = False

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Reply:
    status: int
    body: Any = NO_BODY
    headers: dict[str, str] = field(default_factory=dict)
    # A 200 collection reply whose items partly failed (matters inside /composite allOrNone).
    partial_failure: bool = False


def segments_from_path(path: str) -> list[str]:
    """Split a raw (still percent-encoded) path into decoded segments.

    ``unquote_plus`` because simple-salesforce's ``get_by_custom_id`` encodes external-id
    values with ``quote_plus`` (space -> '+', '+' -> '%2B'); type, field and id segments never
    contain '+'. A trailing slash is ignored.
    """
    parts = path.split("/")
    while parts and parts[-1] == "":
        parts.pop()
    return [unquote_plus(p) for p in parts]


def error_reply(err: SfError) -> Reply:
    if err.status == 300 and "records" in err.extra:
        # Ambiguous external id: Salesforce answers 300 with the matching record URLs.
        return Reply(300, list(err.extra["records"]))
    return Reply(err.status, err.rest_body())
