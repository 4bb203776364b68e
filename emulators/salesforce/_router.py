"""Map ``/services/data/vXX.X/...`` requests to handlers and run them transactionally.

``route`` only looks at method and path, so the HTTP layer can classify (and charge) a call
before executing it. ``dispatch`` is reused by /composite for its subrequests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from emulators.salesforce import _composite as comp
from emulators.salesforce import _convert as convert
from emulators.salesforce import _rest as rest
from emulators.salesforce._errors import SfError, not_found
from emulators.salesforce._types import Reply, SubRequest, error_reply
from emulators.salesforce._writes import Ctx

__all__ = ["Handler", "dispatch", "route"]

Handler = Callable[[Ctx, SubRequest], Reply]
_log = logging.getLogger(__name__)


def _composite(ctx: Ctx, sub: SubRequest) -> Reply:
    return comp.composite(ctx, sub, dispatch)


def _batch(ctx: Ctx, sub: SubRequest) -> Reply:
    return comp.composite_batch(ctx, sub, dispatch)


def _pick(method: str, table: dict[str, tuple[str, Handler]]) -> tuple[str, Handler]:
    if method in table:
        return table[method]
    allowed = ",".join(sorted(table))
    raise SfError(405, "METHOD_NOT_ALLOWED",
                  f"HTTP Method '{method}' not allowed. Allowed are {allowed}")


def _sobjects(method: str, s: list[str]) -> tuple[str, Handler]:
    n = len(s)
    if n == 1:
        return _pick(method, {"GET": ("describe_global", rest.h_describe_global)})
    if n == 2:
        return _pick(method, {"GET": ("sobject_metadata", rest.h_metadata),
                              "POST": ("sobject_create", rest.h_create)})
    if n == 3:
        word = s[2].lower()
        if word == "describe":
            return _pick(method, {"GET": ("describe", rest.h_describe)})
        if word == "updated":
            return _pick(method, {"GET": ("sobject_updated", rest.h_updated)})
        if word == "deleted":
            return _pick(method, {"GET": ("sobject_deleted", rest.h_deleted)})
        if rest.is_record_segment(s[1], s[2]):
            return _pick(method, {"GET": ("sobject_get", rest.h_get),
                                  "PATCH": ("sobject_update", rest.h_update),
                                  "DELETE": ("sobject_delete", rest.h_delete)})
        raise not_found("Provided external ID field does not exist or is not accessible: "
                        f"{s[2]}")
    if n == 4:
        return _pick(method, {"GET": ("sobject_get_by_external_id", rest.h_get_by_ext),
                              "PATCH": ("sobject_upsert", rest.h_upsert),
                              "DELETE": ("sobject_delete_by_external_id",
                                         rest.h_delete_by_ext)})
    raise not_found()


def _composite_routes(method: str, s: list[str]) -> tuple[str, Handler]:
    n = len(s)
    if n == 1:
        return _pick(method, {"POST": ("composite", _composite)})
    if n == 2 and s[1] == "batch":
        return _pick(method, {"POST": ("composite_batch", _batch)})
    if n == 2 and s[1] == "sobjects":
        return _pick(method, {"POST": ("collections_create", comp.collections_create),
                              "PATCH": ("collections_update", comp.collections_update),
                              "DELETE": ("collections_delete", comp.collections_delete)})
    if n == 3 and s[1] == "sobjects":
        return _pick(method, {"GET": ("collections_retrieve", comp.collections_retrieve),
                              "POST": ("collections_retrieve", comp.collections_retrieve)})
    if n == 4 and s[1] == "sobjects":
        return _pick(method, {"PATCH": ("collections_upsert", comp.collections_upsert)})
    raise not_found()


def _actions(method: str, s: list[str]) -> tuple[str, Handler]:
    n = len(s)
    if n == 1:
        return _pick(method, {"GET": ("actions", convert.h_actions)})
    if n == 2 and s[1] == "standard":
        return _pick(method, {"GET": ("actions", convert.h_standard_actions)})
    if n == 2 and s[1] == "custom":
        return _pick(method, {"GET": ("actions", convert.h_custom_actions)})
    if convert.action_name(s) is not None:
        return _pick(method, {"POST": ("action_convert_lead", convert.h_convert_lead)})
    raise not_found()


def route(sub: SubRequest) -> tuple[str, Handler]:
    """Return (endpoint kind, handler) or raise NOT_FOUND / METHOD_NOT_ALLOWED."""
    s, method = sub.segments, sub.method
    if not s:
        return _pick(method, {"GET": ("resources", rest.h_resources)})
    head = s[0]
    if head == "sobjects":
        return _sobjects(method, s)
    if head in ("query", "queryAll"):
        kind = "query" if head == "query" else "query_all"
        if len(s) == 1:
            return _pick(method, {"GET": (kind, rest.h_query)})
        if len(s) == 2:
            return _pick(method, {"GET": (f"{kind}_more", rest.h_query_more)})
    if head == "limits" and len(s) == 1:
        return _pick(method, {"GET": ("limits", rest.h_limits)})
    if head == "composite":
        return _composite_routes(method, s)
    if head == "actions":
        return _actions(method, s)
    raise not_found()


def dispatch(ctx: Ctx, sub: SubRequest) -> tuple[str, Reply]:
    """Route and execute one request as its own transaction; errors become Salesforce bodies."""
    try:
        kind, handler = route(sub)
    except SfError as err:
        return "unknown", error_reply(err)
    state = ctx.state
    savepoint = state.begin()
    try:
        return kind, handler(ctx, sub)
    except SfError as err:
        state.rollback(savepoint)
        return kind, error_reply(err)
    except Exception:  # a bug in the emulator must still look like a Salesforce 500
        state.rollback(savepoint)
        _log.exception("emulator handler failed for %s %s", sub.method, "/".join(sub.segments))
        return kind, Reply(500, [{"errorCode": "UNKNOWN_EXCEPTION",
                                  "message": "An unexpected error occurred. Please include this "
                                  "ErrorId if you contact support: emulator"}])
    finally:
        state.end()
