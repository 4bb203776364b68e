"""Composite family (fact sheet §4): /composite, /composite/batch, sObject Collections.

All three answer HTTP 200 when the envelope parses, with failures inside the body.
/composite and collections are one API call per request; /composite/batch is one per
subrequest (the HTTP layer counts the first, ``batch`` counts the rest).
Transactions use OrgState savepoints, so allOrNone rolls back exactly what was written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from emulators.salesforce._duplicates import header_options
from emulators.salesforce._errors import SfError
from emulators.salesforce._ids import canonical_id
from emulators.salesforce._rest import save_result
from emulators.salesforce._schema import get_sobject
from emulators.salesforce._types import NO_BODY, Reply, SubRequest, segments_from_path
from emulators.salesforce._writes import Ctx, create, delete, update, upsert, wire_record

__all__ = [
    "collections_create",
    "collections_delete",
    "collections_retrieve",
    "collections_update",
    "collections_upsert",
    "composite",
    "composite_batch",
]

Dispatch = Callable[[Ctx, SubRequest], tuple[str, Reply]]

MAX_COLLECTION_RECORDS = 200
MAX_RETRIEVE_IDS = 2000
MAX_COMPOSITE_SUBREQUESTS = 25
MAX_COMPOSITE_QUERY_OR_COLLECTION = 5
MAX_BATCH_SUBREQUESTS = 25
_REFERENCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
_REFERENCE_RE = re.compile(r"@\{([A-Za-z0-9_]+)((?:\.[A-Za-z0-9_]+|\[\d+\])+)\}")
_ROLLED_BACK = SfError(400, "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                       "Record rolled back because not all records were valid and the request "
                       "was using AllOrNone header", [])
_HALTED = SfError(400, "PROCESSING_HALTED", "The transaction was rolled back since another "
                  "operation in the same transaction failed.")


def child_ctx(ctx: Ctx, version: str, headers: dict[str, str]) -> Ctx:
    """Context of a subrequest: the parent's, with its own API version and request headers
    (``httpHeaders`` of a /composite subrequest) added."""
    rules = header_options(headers.get("sforce-duplicate-rule-header"))
    client = header_options(headers.get("sforce-call-options")).get("client")
    return replace(ctx, version=version,
                   allow_duplicates=ctx.allow_duplicates or rules.get("allowsave") == "true",
                   include_record_details=(ctx.include_record_details
                                           or rules.get("includerecorddetails") == "true"),
                   call_client=client or ctx.call_client)


def _envelope_error(message: str, code: str = "JSON_PARSER_ERROR") -> SfError:
    return SfError(400, code, message)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


# ------------------------------------------------------------------ collections
def _records_envelope(sub: SubRequest) -> tuple[list[Any], bool]:
    body = sub.body
    if not isinstance(body, dict) or not isinstance(body.get("records"), list):
        raise _envelope_error("Missing or invalid 'records' in the request body")
    records = body["records"]
    if len(records) > MAX_COLLECTION_RECORDS:
        raise SfError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than "
                      f"{MAX_COLLECTION_RECORDS} records into this call")
    return records, _flag(body.get("allOrNone", False)) or sub.force_all_or_none


def _record_type(record: Any) -> str:
    attrs = record.get("attributes") if isinstance(record, dict) else None
    type_name = attrs.get("type") if isinstance(attrs, dict) else None
    sobj = get_sobject(type_name) if isinstance(type_name, str) else None
    if sobj is None:
        raise SfError(400, "INVALID_TYPE", "Must send a concrete entity type.", [])
    return sobj.name


def _run_items(ctx: Ctx, items: list[Any], all_or_none: bool,
               op: Callable[[Any], dict[str, Any]],
               known_id: Callable[[Any], str | None]) -> Reply:
    """Apply ``op`` per item (each in its own savepoint); build SaveResult-style answers."""
    state = ctx.state
    outer = state.begin()
    results: list[dict[str, Any]] = []
    failed = False
    try:
        for item in items:
            savepoint = state.begin()
            try:
                results.append(op(item))
            except SfError as err:
                state.rollback(savepoint)
                failed = True
                result: dict[str, Any] = {"success": False, "errors": [err.item_error()]}
                if (rid := known_id(item)) is not None:
                    result = {"id": rid, **result}
                results.append(result)
            finally:
                state.end()
        if failed and all_or_none:
            state.rollback(outer)
            for i, result in enumerate(results):
                if result["success"]:
                    rid = known_id(items[i])
                    results[i] = ({"id": rid} if rid else {}) | {
                        "success": False, "errors": [_ROLLED_BACK.item_error()]}
    finally:
        state.end()
    return Reply(200, results, partial_failure=failed)


def collections_create(ctx: Ctx, sub: SubRequest) -> Reply:
    records, all_or_none = _records_envelope(sub)

    def op(record: Any) -> dict[str, Any]:
        type_name = _record_type(record)
        if any(k.lower() == "id" for k in record):
            raise SfError(400, "INVALID_FIELD",
                          "Cannot specify Id in an insert call. Use update or upsert instead.",
                          ["Id"])
        return save_result(create(ctx, type_name, record, status=400))

    return _run_items(ctx, records, all_or_none, op, lambda _: None)


def _record_id(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    raw = record.get("id", record.get("Id"))
    return canonical_id(raw) if isinstance(raw, str) else None


def collections_update(ctx: Ctx, sub: SubRequest) -> Reply:
    records, all_or_none = _records_envelope(sub)

    def op(record: Any) -> dict[str, Any]:
        type_name = _record_type(record)
        raw = record.get("id", record.get("Id"))
        if raw is None:
            raise SfError(400, "MISSING_ARGUMENT", "Id not specified in an update call",
                          ["Id"])
        body = {k: v for k, v in record.items() if k != "id"}
        return save_result(update(ctx, type_name, str(raw), body, status=400))

    return _run_items(ctx, records, all_or_none, op, _record_id)


def collections_upsert(ctx: Ctx, sub: SubRequest) -> Reply:
    records, all_or_none = _records_envelope(sub)
    sobj = get_sobject(sub.segments[2])
    if sobj is None:
        raise SfError(400, "INVALID_TYPE", f"sObject type '{sub.segments[2]}' is not supported.")
    fd = sobj.field(sub.segments[3])
    if fd is None or not fd.external_id:
        # Record Ids are not allowed as the key of a collection upsert (fact sheet §4.3).
        raise SfError(400, "INVALID_FIELD", "Provided external ID field does not exist or is "
                      f"not accessible: {sub.segments[3]}")

    def key_of(record: Any) -> str | None:
        if not isinstance(record, dict):
            return None
        value = next((v for k, v in record.items() if k.lower() == fd.name.lower()), None)
        return None if value is None else str(value)

    # The same key twice in one request fails for those items (they would race in one txn).
    counts: dict[str, int] = {}
    for record in records:
        if (key := key_of(record)) is not None:
            counts[key.lower()] = counts.get(key.lower(), 0) + 1

    def op(record: Any) -> dict[str, Any]:
        if _record_type(record) != sobj.name:
            raise SfError(400, "INVALID_TYPE",
                          f"Record type must be {sobj.name} for this upsert", [])
        key = key_of(record)
        if key is None:
            raise SfError(400, "MISSING_ARGUMENT", f"{fd.name} not specified", [fd.name])
        if counts[key.lower()] > 1:
            raise SfError(400, "DUPLICATE_EXTERNAL_ID",
                          f"Duplicate external id specified: {key}", [fd.name])
        body = {k: v for k, v in record.items() if k.lower() != fd.name.lower()}
        record_id, created = upsert(ctx, sobj.name, fd.name, key, body, status=400)
        return save_result(record_id, created)

    return _run_items(ctx, records, all_or_none, op, lambda _: None)


def collections_delete(ctx: Ctx, sub: SubRequest) -> Reply:
    raw = sub.param("ids") or ""
    ids = [i.strip() for i in raw.split(",") if i.strip()]
    if not ids:
        raise SfError(400, "MISSING_ARGUMENT", "ids parameter is required")
    if len(ids) > MAX_COLLECTION_RECORDS:
        raise SfError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than "
                      f"{MAX_COLLECTION_RECORDS} records into this call")
    all_or_none = _flag(sub.param("allOrNone") or False) or sub.force_all_or_none

    def op(raw_id: str) -> dict[str, Any]:
        return save_result(delete(ctx, raw_id))

    return _run_items(ctx, ids, all_or_none, op,
                      lambda raw_id: canonical_id(raw_id) or raw_id)


def collections_retrieve(ctx: Ctx, sub: SubRequest) -> Reply:
    sobj = get_sobject(sub.segments[2])
    if sobj is None:
        raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
    if sub.method == "POST":
        body = sub.body if isinstance(sub.body, dict) else {}
        ids, fields = body.get("ids") or [], body.get("fields") or []
    else:
        ids = [i for i in (sub.param("ids") or "").split(",") if i]
        fields = [f for f in (sub.param("fields") or "").split(",") if f]
    if not ids or not fields:
        raise SfError(400, "MISSING_ARGUMENT", "ids and fields are required")
    if len(ids) > MAX_RETRIEVE_IDS:
        raise SfError(400, "EXCEEDED_ID_LIMIT", f"Maximum number of ids is {MAX_RETRIEVE_IDS}")
    names = []
    for name in fields:
        fd = sobj.field(str(name).strip())
        if fd is None:
            raise SfError(400, "INVALID_FIELD",
                          f"No such column '{name}' on entity '{sobj.name}'.")
        names.append(fd.name)
    out: list[Any] = []
    for raw in ids:
        record_id = canonical_id(str(raw))
        record = ctx.state.get(sobj.name, record_id) if record_id else None
        live = record is not None and not record["IsDeleted"]
        out.append(wire_record(ctx, sobj.name, record, names) if live and record else None)
    return Reply(200, out)


# ------------------------------------------------------------------ /composite
def _lookup(results: dict[str, Reply], ref: str, path: str) -> Any:
    reply = results.get(ref)
    if reply is None or reply.status >= 400 or reply.body is NO_BODY:
        raise SfError(400, "PROCESSING_HALTED",
                      f"Invalid reference specified. No value for {ref}{path} found in {ref}. "
                      f"Provided referenceId ('{ref}') refers to a failed or missing "
                      "subrequest.")
    node: Any = reply.body
    for key, index in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
        try:
            node = node[int(index)] if index else node[key]
        except (KeyError, IndexError, TypeError):
            raise SfError(400, "PROCESSING_HALTED",
                          f"Invalid reference specified. No value for {ref}{path} found in "
                          f"{ref}.") from None
    return node


def _substitute(value: Any, results: dict[str, Reply]) -> Any:
    if isinstance(value, str):
        if "@{" not in value:  # most values: no reference, no regex
            return value
        whole = _REFERENCE_RE.fullmatch(value)
        if whole:  # keep non-string types when the whole value is one reference
            return _lookup(results, whole.group(1), whole.group(2))
        return _REFERENCE_RE.sub(lambda m: str(_lookup(results, m.group(1), m.group(2))),
                                 value)
    if isinstance(value, dict):
        return {k: _substitute(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, results) for v in value]
    return value


def _sub_from_url(method: str, url: str, body: Any, prefix: str) -> tuple[str, SubRequest]:
    parts = urlsplit(url)
    match = re.match(prefix + r"v(\d+\.\d+)(?:/(.*))?$", parts.path)
    if match is None:
        raise SfError(400, "INVALID_INPUT", f"Invalid subrequest url: {url}")
    return match.group(1), SubRequest(
        method=method.upper(), segments=segments_from_path(match.group(2) or ""),
        query=parse_qs(parts.query, keep_blank_values=True), body=body)


def _is_heavy(sub: SubRequest) -> bool:
    head = sub.segments[:2]
    return bool(head) and (head[0] in ("query", "queryAll") or head == ["composite", "sobjects"])


def composite(ctx: Ctx, sub: SubRequest, dispatch: Dispatch) -> Reply:
    body = sub.body
    if not isinstance(body, dict) or not isinstance(body.get("compositeRequest"), list):
        raise _envelope_error("'compositeRequest' is a required field.")
    requests = body["compositeRequest"]
    if len(requests) > MAX_COMPOSITE_SUBREQUESTS:
        raise _envelope_error(f"Maximum number of subrequests allowed is "
                              f"{MAX_COMPOSITE_SUBREQUESTS}", "LIMIT_EXCEEDED")
    all_or_none = _flag(body.get("allOrNone", False))
    seen: set[str] = set()
    heavy = 0
    for item in requests:
        if not isinstance(item, dict):
            raise _envelope_error("Each subrequest must be an object")
        for required in ("method", "url", "referenceId"):
            if not isinstance(item.get(required), str):
                raise _envelope_error(f"'{required}' is a required field.")
        ref = item["referenceId"]
        if not _REFERENCE_ID_RE.match(ref):
            raise _envelope_error(f"Invalid referenceId: {ref}", "INVALID_INPUT")
        if ref in seen:
            raise _envelope_error(f"Duplicate referenceId provided in the request: {ref}",
                                  "INVALID_INPUT")
        seen.add(ref)
        _, probe = _sub_from_url(item["method"], _REFERENCE_RE.sub("x", item["url"]), None,
                                 "/services/data/")
        heavy += _is_heavy(probe)
    if heavy > MAX_COMPOSITE_QUERY_OR_COLLECTION:
        raise _envelope_error("A composite request can contain at most "
                              f"{MAX_COMPOSITE_QUERY_OR_COLLECTION} query or collection "
                              "subrequests", "LIMIT_EXCEEDED")
    state = ctx.state
    outer = state.begin()
    results: dict[str, Reply] = {}
    answers: list[dict[str, Any]] = []
    try:
        for item in requests:
            ref = item["referenceId"]
            try:
                url = _substitute(item["url"], results)
                payload = _substitute(item.get("body", NO_BODY), results)
                version, child = _sub_from_url(item["method"], url, payload, "/services/data/")
                child.headers = {k.lower(): str(v) for k, v in
                                 (item.get("httpHeaders") or {}).items()}
                child.force_all_or_none = all_or_none
                if child.segments[:1] == ["composite"] and child.segments[1:2] != ["sobjects"]:
                    raise SfError(400, "INVALID_INPUT", "Nested composite requests are not "
                                  "supported")
                _, reply = dispatch(child_ctx(ctx, version, child.headers), child)
            except SfError as err:
                reply = Reply(err.status, err.rest_body())
            if not all_or_none:
                # Independent subrequests commit on their own (own change-event transaction).
                state.commit_point()
            results[ref] = reply
            answers.append({"body": None if reply.body is NO_BODY else reply.body,
                            "httpHeaders": reply.headers, "httpStatusCode": reply.status,
                            "referenceId": ref})
            if all_or_none and (reply.status >= 400 or reply.partial_failure):
                state.rollback(outer)
                for answer in answers:
                    if answer["referenceId"] != ref:
                        answer.update(body=_HALTED.rest_body(), httpHeaders={},
                                      httpStatusCode=400)
                done = {a["referenceId"] for a in answers}
                answers += [{"body": _HALTED.rest_body(), "httpHeaders": {},
                             "httpStatusCode": 400, "referenceId": r["referenceId"]}
                            for r in requests if r["referenceId"] not in done]
                break
    finally:
        state.end()
    return Reply(200, {"compositeResponse": answers})


# ------------------------------------------------------------------ /composite/batch
def composite_batch(ctx: Ctx, sub: SubRequest, dispatch: Dispatch) -> Reply:
    body = sub.body
    if not isinstance(body, dict) or not isinstance(body.get("batchRequests"), list):
        raise _envelope_error("'batchRequests' is a required field.")
    requests = body["batchRequests"]
    if len(requests) > MAX_BATCH_SUBREQUESTS:
        raise _envelope_error(f"Maximum number of subrequests allowed is "
                              f"{MAX_BATCH_SUBREQUESTS}", "LIMIT_EXCEEDED")
    halt = _flag(body.get("haltOnError", False))
    # Each subrequest is an API call of its own; the HTTP layer already counted one.
    if len(requests) > 1:
        ctx.state.count_call("composite_batch_subrequest", len(requests) - 1)
    results: list[dict[str, Any]] = []
    has_errors = False
    for item in requests:
        if halt and has_errors:
            results.append({"statusCode": 412, "result": [
                {"errorCode": "BATCH_PROCESSING_HALTED",
                 "message": "Batch processing halted per request"}]})
            continue
        try:
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                raise _envelope_error("'url' is a required field.")
            payload = item.get("richInput", item.get("body", NO_BODY))
            version, child = _sub_from_url(str(item.get("method", "GET")), item["url"], payload,
                                           "/?(?:services/data/)?")
            _, reply = dispatch(child_ctx(ctx, version, child.headers), child)
        except SfError as err:
            reply = Reply(err.status, err.rest_body())
        ctx.state.commit_point()  # every batch subrequest is its own transaction
        has_errors = has_errors or reply.status >= 400
        results.append({"statusCode": reply.status,
                        "result": None if reply.body is NO_BODY else reply.body})
    return Reply(200, {"hasErrors": has_errors, "results": results})
