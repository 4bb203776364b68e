"""SOQL reads that fill the table or its gaps, each row a change record (see ``_changes``).

- ``read_all``: the initial load, every live row (``query``, 2,000 rows a page: 10k
  Contacts cost 5 API calls).
- ``read_ids``: the records a gap event names (``queryAll ... WHERE Id IN (...)``, 200 ids a
  query so the URL stays far below 16 KB); a record in the recycle bin is a DELETE, one not
  found at all (hard-deleted) too.
- ``read_since``: every record modified since a point in time (``queryAll ... WHERE
  SystemModstamp >= ...``): after an expired replay id or a GAP_OVERFLOW. Deleted rows
  included, so a delete we missed becomes a DELETE.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import requests
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceResourceNotFound,
)

from frontforce.errors import FatalError, RetriableError
from frontforce.salesforce import SalesforceConnection
from sources.salesforce._changes import from_row, gone
from sources.salesforce._fields import spec_for
from sources.salesforce._pubsub import AuthExpired

__all__ = ["read_all", "read_ids", "read_since"]

_IDS_PER_QUERY = 200


def _rows(conn: SalesforceConnection, soql: str, include_deleted: bool) -> Iterator[dict[str, Any]]:
    try:
        yield from conn.client.query_all_iter(soql, include_deleted=include_deleted)
    except SalesforceExpiredSession as exc:
        raise AuthExpired(f"salesforce query: session expired: {exc}") from exc
    except (SalesforceMalformedRequest, SalesforceResourceNotFound) as exc:
        # Our query is wrong for this org (a field it does not have): no retry fixes that.
        raise FatalError(f"salesforce query refused: {soql[:200]}: {exc}") from exc
    except (requests.RequestException, SalesforceError) as exc:
        raise RetriableError(f"salesforce query failed: {type(exc).__name__}: {exc}") from exc


def _select(sobject: str, custom: dict[str, list[str]], with_deleted: bool) -> str:
    fields = spec_for(sobject).soql_fields(custom.get(sobject, []), with_deleted)
    return f"SELECT {', '.join(fields)} FROM {sobject}"


def read_all(conn: SalesforceConnection, sobject: str,
             custom: dict[str, list[str]]) -> Iterator[dict[str, Any]]:
    for row in _rows(conn, _select(sobject, custom, False), False):
        yield from_row(sobject, row, custom)


def read_ids(conn: SalesforceConnection, sobject: str, ids: list[str],
             custom: dict[str, list[str]], commit_ms: int) -> Iterator[dict[str, Any]]:
    deletable = spec_for(sobject).deletable
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start:start + _IDS_PER_QUERY]
        quoted = ", ".join(f"'{i}'" for i in chunk if i.isalnum())
        soql = f"{_select(sobject, custom, True)} WHERE Id IN ({quoted})"
        seen: set[str] = set()
        for row in _rows(conn, soql, deletable):
            seen.add(str(row["Id"])[:15])
            yield from_row(sobject, row, custom)
        for record_id in chunk:
            if record_id[:15] not in seen:
                yield gone(sobject, record_id, commit_ms)


def soql_datetime(epoch_ms: int) -> str:
    stamp = dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def read_since(conn: SalesforceConnection, sobject: str, since_ms: int,
               custom: dict[str, list[str]]) -> Iterator[dict[str, Any]]:
    soql = (f"{_select(sobject, custom, True)} WHERE SystemModstamp >= "
            f"{soql_datetime(since_ms)} ORDER BY SystemModstamp, Id")
    for row in _rows(conn, soql, spec_for(sobject).deletable):
        yield from_row(sobject, row, custom)
