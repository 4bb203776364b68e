"""Handlers for the single-resource REST API: sObject rows, describe, query, limits.

Handlers take ``(ctx, SubRequest)`` and return a ``Reply``; they raise ``SfError`` for
Salesforce-shaped failures. Callers hold ``state.lock``.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from emulators.salesforce import _describe
from emulators.salesforce._errors import SfError, invalid_field, not_found
from emulators.salesforce._ids import canonical_id, looks_like_id
from emulators.salesforce._query import run_query
from emulators.salesforce._store import Locator
from emulators.salesforce._timefmt import format_datetime, parse_datetime
from emulators.salesforce._types import NO_BODY, Reply, SubRequest
from emulators.salesforce._writes import (
    Ctx,
    create,
    delete,
    find_record,
    record_url,
    require_sobject,
    update,
    upsert,
    wire_record,
)

__all__ = [
    "h_create",
    "h_delete",
    "h_delete_by_ext",
    "h_deleted",
    "h_describe",
    "h_describe_global",
    "h_get",
    "h_get_by_ext",
    "h_limits",
    "h_metadata",
    "h_query",
    "h_query_more",
    "h_resources",
    "h_update",
    "h_updated",
    "h_upsert",
    "is_record_segment",
    "page_size_for",
    "save_result",
]

_UPSERT_BODY_MIN_VERSION = 46.0  # v45 and earlier answer 204 with no body on update
_UPDATED_MAX_DAYS, _DELETED_MAX_DAYS = 30, 15


def _body(sub: SubRequest) -> Any:
    if sub.body is NO_BODY:
        raise SfError(400, "JSON_PARSER_ERROR", "The request body is empty")
    return sub.body


def save_result(record_id: str, created: bool | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"id": record_id, "success": True, "errors": []}
    if created is not None:
        result["created"] = created
    return result


def is_record_segment(type_name: str, segment: str) -> bool:
    """True if a ``sobjects/{Type}/{segment}`` path segment is a record id, not a field name."""
    sobj = require_sobject(type_name)
    return sobj.field(segment) is None and looks_like_id(segment)


# ------------------------------------------------------------------ discovery
def h_resources(ctx: Ctx, sub: SubRequest) -> Reply:
    return Reply(200, _describe.resources(ctx.version))


def h_describe_global(ctx: Ctx, sub: SubRequest) -> Reply:
    return Reply(200, _describe.describe_global(ctx.version))


def h_metadata(ctx: Ctx, sub: SubRequest) -> Reply:
    sobj = require_sobject(sub.segments[1])
    live = sorted(ctx.state.live(sobj.name), key=lambda r: r["LastModifiedDate"] or "",
                  reverse=True)[:5]
    recent = [{"attributes": {"type": sobj.name, "url": record_url(ctx, sobj.name, r["Id"])},
               "Id": r["Id"], **({"Name": r["Name"]} if "Name" in r else {})} for r in live]
    return Reply(200, {"objectDescribe": _describe.sobject_basic(sobj, ctx.version),
                       "recentItems": recent})


def h_describe(ctx: Ctx, sub: SubRequest) -> Reply:
    sobj = require_sobject(sub.segments[1])
    return Reply(200, _describe.describe_sobject(sobj, ctx.version))


# ------------------------------------------------------------------ rows
def h_create(ctx: Ctx, sub: SubRequest) -> Reply:
    type_name = require_sobject(sub.segments[1]).name
    record_id = create(ctx, type_name, _body(sub))
    return Reply(201, save_result(record_id),
                 {"Location": record_url(ctx, type_name, record_id)})


def _fields_param(ctx: Ctx, type_name: str, sub: SubRequest) -> list[str] | None:
    raw = sub.param("fields")
    if not raw:
        return None
    sobj = require_sobject(type_name)
    out = []
    for name in (n.strip() for n in raw.split(",") if n.strip()):
        fd = sobj.field(name)
        if fd is None:
            raise invalid_field(f"No such column '{name}' on entity '{sobj.name}'. If you are "
                                "attempting to use a custom field, be sure to append the '__c' "
                                "after the custom field name. Please reference your WSDL or the "
                                "describe call for the appropriate names.")
        out.append(fd.name)
    return out


def h_get(ctx: Ctx, sub: SubRequest) -> Reply:
    sobj = require_sobject(sub.segments[1])
    raw_id = sub.segments[2]
    record_id = canonical_id(raw_id)
    if record_id is None or not record_id.startswith(sobj.key_prefix):
        raise SfError(400, "MALFORMED_ID", f"{sobj.name} ID: id value of incorrect type: "
                      f"{raw_id}", ["Id"])
    record = ctx.state.get(sobj.name, record_id)
    if record is None:
        raise not_found()
    if record["IsDeleted"]:
        raise SfError(404, "ENTITY_IS_DELETED", "entity is deleted", [])
    return Reply(200, wire_record(ctx, sobj.name, record, _fields_param(ctx, sobj.name, sub)))


def h_update(ctx: Ctx, sub: SubRequest) -> Reply:
    update(ctx, sub.segments[1], sub.segments[2], _body(sub))
    return Reply(204)


def h_delete(ctx: Ctx, sub: SubRequest) -> Reply:
    sobj = require_sobject(sub.segments[1])
    delete(ctx, sub.segments[2], type_name=sobj.name)
    return Reply(204)


def _ext_ids(ctx: Ctx, sub: SubRequest) -> tuple[str, list[str]]:
    sobj = require_sobject(sub.segments[1])
    fd = sobj.field(sub.segments[2])
    if fd is None or not (fd.external_id or fd.id_lookup):
        raise not_found("Provided external ID field does not exist or is not accessible: "
                        f"{sub.segments[2]}")
    value = sub.segments[3]
    if fd.name == "Id":
        found = find_record(ctx, value, type_=sobj.name)
        return sobj.name, [found[1]["Id"]] if found else []
    if fd.unique or fd.external_id:
        return sobj.name, ctx.state.find_by_field(sobj.name, fd.name, value)
    # idLookup fields without an index (e.g. Contact.Email): scan, case-insensitively.
    wanted = value.lower()
    return sobj.name, sorted(r["Id"] for r in ctx.state.live(sobj.name)
                             if str(r.get(fd.name) or "").lower() == wanted)


def _one_by_ext(ctx: Ctx, sub: SubRequest) -> tuple[str, dict[str, Any]]:
    type_name, ids = _ext_ids(ctx, sub)
    if not ids:
        raise not_found()
    if len(ids) > 1:
        raise SfError(300, "MULTIPLE_CHOICES", "Multiple records found",
                      extra={"records": [record_url(ctx, type_name, i) for i in ids]})
    record = ctx.state.get(type_name, ids[0])
    assert record is not None
    return type_name, record


def h_get_by_ext(ctx: Ctx, sub: SubRequest) -> Reply:
    type_name, record = _one_by_ext(ctx, sub)
    return Reply(200, wire_record(ctx, type_name, record, _fields_param(ctx, type_name, sub)))


def h_delete_by_ext(ctx: Ctx, sub: SubRequest) -> Reply:
    type_name, record = _one_by_ext(ctx, sub)
    delete(ctx, record["Id"], type_name=type_name)
    return Reply(204)


def h_upsert(ctx: Ctx, sub: SubRequest) -> Reply:
    _, type_name, field_name, value = sub.segments[:4]
    update_only = (sub.param("updateOnly") or "").lower() == "true"
    record_id, created = upsert(ctx, type_name, field_name, value, _body(sub),
                                update_only=update_only)
    if created:
        return Reply(201, save_result(record_id, True),
                     {"Location": record_url(ctx, require_sobject(type_name).name, record_id)})
    if float(ctx.version) < _UPSERT_BODY_MIN_VERSION:
        return Reply(204)
    return Reply(200, save_result(record_id, False))


# ------------------------------------------------------------------ replication
def _window(ctx: Ctx, sub: SubRequest, max_days: int) -> tuple[dt.datetime, dt.datetime]:
    try:
        start = parse_datetime(sub.param("start") or "")
        end = parse_datetime(sub.param("end") or "")
    except ValueError:
        raise SfError(400, "INVALID_REPLICATION_DATE",
                      "start and end must be valid ISO 8601 datetimes") from None
    # Salesforce truncates both bounds to the minute and never covers the current minute.
    start = start.replace(second=0, microsecond=0)
    now = ctx.state.now()
    end = min(end, now).replace(second=0, microsecond=0)
    if end <= start:
        raise SfError(400, "INVALID_REPLICATION_DATE", "start date must be before end date "
                      "by at least one minute")
    if start < now - dt.timedelta(days=max_days):
        raise SfError(400, "INVALID_REPLICATION_DATE",
                      f"startDate cannot be more than {max_days} days ago")
    return start, end


def h_updated(ctx: Ctx, sub: SubRequest) -> Reply:
    sobj = require_sobject(sub.segments[1])
    start, end = _window(ctx, sub, _UPDATED_MAX_DAYS)
    ids = [r["Id"] for r in ctx.state.live(sobj.name)
           if start <= parse_datetime(r["SystemModstamp"]) < end]
    return Reply(200, {"ids": ids, "latestDateCovered": format_datetime(end)})


def h_deleted(ctx: Ctx, sub: SubRequest) -> Reply:
    sobj = require_sobject(sub.segments[1])
    start, end = _window(ctx, sub, _DELETED_MAX_DAYS)
    rows = []
    for entry in ctx.state.deleted_log[sobj.name]:
        record = ctx.state.get(sobj.name, entry["id"])
        if record is None or not record["IsDeleted"]:
            continue  # purged or undeleted since
        if start <= parse_datetime(entry["deletedDate"]) < end:
            rows.append({"id": entry["id"], "deletedDate": entry["deletedDate"]})
    earliest = (ctx.state.now() - dt.timedelta(days=_DELETED_MAX_DAYS)).replace(
        second=0, microsecond=0)
    return Reply(200, {"deletedRecords": rows, "earliestDateAvailable": format_datetime(earliest),
                       "latestDateCovered": format_datetime(end)})


# ------------------------------------------------------------------ query
def page_size_for(ctx: Ctx, sub: SubRequest) -> int:
    """Configured page size, lowered by ``Sforce-Query-Options: batchSize=N`` (200..2000)."""
    size = int(ctx.state.config["page_size"])
    options = sub.headers.get("sforce-query-options", "")
    for part in options.split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "batchsize" and value.strip().isdigit():
            size = min(size, max(200, min(2000, int(value))))
    return max(1, size)


def _page(ctx: Ctx, locator_id: str | None, locator: Locator) -> dict[str, Any]:
    start = locator.position
    chunk = locator.records[start: start + locator.page_size]
    locator.position = start + len(chunk)
    body: dict[str, Any] = {"totalSize": locator.total_size,
                            "done": locator.position >= len(locator.records)}
    if not body["done"]:
        if locator_id is None:
            locator_id = ctx.state.add_locator(locator)
        body["nextRecordsUrl"] = (f"/services/data/v{ctx.version}/{locator.endpoint}/"
                                  f"{locator_id}-{locator.position}")
    elif locator_id is not None:
        ctx.state.locators.pop(locator_id, None)
    body["records"] = chunk
    return body


def h_query(ctx: Ctx, sub: SubRequest) -> Reply:
    endpoint = sub.segments[0]
    soql = sub.param("q")
    if soql is None:
        raise SfError(400, "MALFORMED_QUERY", "A query string has to be specified")
    result = run_query(ctx, soql, include_deleted=endpoint == "queryAll")
    locator = Locator(result.records, 0, result.total_size, endpoint,
                      page_size_for(ctx, sub), time.monotonic())
    return Reply(200, _page(ctx, None, locator))


def h_query_more(ctx: Ctx, sub: SubRequest) -> Reply:
    token = sub.segments[1]
    locator_id, _, position = token.partition("-")
    locator = ctx.state.take_locator(locator_id)
    if locator is None or not position.isdigit() or int(position) > len(locator.records):
        raise SfError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    locator.position = int(position)
    return Reply(200, _page(ctx, locator_id, locator))


# ------------------------------------------------------------------ limits
def h_limits(ctx: Ctx, sub: SubRequest) -> Reply:
    state = ctx.state
    daily = int(state.config["daily_limit"])

    def entry(maximum: int, remaining: int | None = None) -> dict[str, int]:
        return {"Max": maximum, "Remaining": maximum if remaining is None else remaining}

    return Reply(200, {
        "DailyApiRequests": entry(daily, max(0, daily - state.api_used())),
        "DailyAsyncApexExecutions": entry(250000),
        "DailyBulkApiBatches": entry(15000),
        "DailyBulkV2QueryJobs": entry(10000),
        "DailyBulkV2QueryFileStorageMB": entry(976562),
        "DailyDeliveredPlatformEvents": entry(10000),
        "DailyStreamingApiEvents": entry(10000),
        "ConcurrentAsyncGetReportInstances": entry(200),
        "DataStorageMB": entry(5),
        "FileStorageMB": entry(20),
        "HourlyPublishedPlatformEvents": entry(50000),
        "MonthlyPlatformEventsUsageEntitlement": entry(0),
    })
