"""Datetime/date wire formats. REST returns ``2024-05-01T12:34:56.000+0000`` (fact sheet §0.12)."""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache

__all__ = ["format_date", "format_datetime", "parse_date", "parse_datetime"]

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?$"
)


def format_datetime(value: dt.datetime) -> str:
    # isoformat ends "+00:00" for UTC; the wire form has "+0000".
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")[:-6] + "+0000"


def format_date(value: dt.date) -> str:
    return value.isoformat()


@lru_cache(maxsize=65536)
def parse_datetime(text: str) -> dt.datetime:
    """Parse the ISO-8601 variants clients send; naive values are taken as UTC."""
    if not isinstance(text, str) or not _DATETIME_RE.match(text.strip()):
        raise ValueError(f"not a datetime: {text!r}")
    text = text.strip()
    # fromisoformat on 3.11 handles 'Z' and '+0000' but only up to 6 fractional digits.
    match = re.match(r"^(.*\.\d{6})\d+(.*)$", text)
    if match:
        text = match.group(1) + match.group(2)
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


@lru_cache(maxsize=65536)
def parse_date(text: str) -> dt.date:
    if not isinstance(text, str) or not _DATE_RE.match(text):
        raise ValueError(f"not a date: {text!r}")
    return dt.date.fromisoformat(text)
