"""Admin API under /__admin/ — test control, not part of Salesforce's public contract.

Loopback-only, no bearer auth, never counted against the API allocation, never subject to
fault rules. Endpoints are listed in the package docstring (``emulators.salesforce``).
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulators.salesforce._cdc import CDC_ENTITIES, CHANGE_TYPES
from emulators.salesforce._errors import SfError
from emulators.salesforce._ids import canonical_id
from emulators.salesforce._schema import get_sobject
from emulators.salesforce._settings import Settings
from emulators.salesforce._store import OrgState
from emulators.salesforce._writes import Ctx, create, undelete, wire_record

__all__ = ["RequestLog", "RequestLogMiddleware", "admin_routes", "json_response"]

_LOOPBACK = {"127.0.0.1", "::1", "localhost", "testclient"}
_SEED_REF = re.compile(r"^@(\w+)\[(\d+)\]$")
_RECORD_ID = re.compile(r"^(?=.*\d)[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")


class RequestLog:
    """Every public request as (time, "METHOD path", status), record ids and external id
    values in paths replaced by placeholders: a read-only counter that sees what the API
    allocation does not count (logins, ``/limits``) as well as what it does."""

    def __init__(self, maxlen: int = 500_000) -> None:
        self.entries: deque[tuple[float, str, int]] = deque(maxlen=maxlen)

    @staticmethod
    def key(method: str, path: str) -> str:
        segs = ["{id}" if _RECORD_ID.match(s) else s for s in path.split("/")]
        # .../sobjects/{Type}/{ExternalIdField}/{value}: the value is data, not a route.
        if len(segs) == 8 and segs[1:3] == ["services", "data"] and segs[4] == "sobjects":
            segs[7] = "{value}"
        return f"{method} {'/'.join(segs)}"

    def counts(self, since: float) -> dict[str, Any]:
        by_path: dict[str, int] = {}
        by_status: dict[str, int] = {}
        for at, key, status in list(self.entries):
            if at >= since:
                by_path[key] = by_path.get(key, 0) + 1
                by_status[str(status)] = by_status.get(str(status), 0) + 1
        return {"since": since, "until": time.time(), "total": sum(by_path.values()),
                "requests": dict(sorted(by_path.items())), "by_status": by_status}


class RequestLogMiddleware:
    """Records each request outside ``/__admin/`` in a ``RequestLog`` (outermost: injected
    faults and refusals are counted too, with the status the client saw)."""

    def __init__(self, app: ASGIApp, log: RequestLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/__admin/"):
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            self.log.entries.append((time.time(), RequestLog.key(scope["method"], path), status))


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"expected a boolean, got {value!r}")


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return int(value)


_CONFIG_KEYS: dict[str, Any] = {
    "daily_limit": int, "page_size": int, "session_timeout": float, "clock_offset": float,
    "duplicate_rules": _bool, "enforce_unique": _bool, "cdc_retention_hours": float,
    "cdc_delivery_limit": _non_negative_int, "cdc_entity_limit": _non_negative_int}
# Config-like keys that are not stored in state.config.
_SPECIAL_CONFIG = {"api_usage", "cdc_selected_entities"}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status_code=status,
                    media_type="application/json;charset=UTF-8", headers=headers)


def _error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


async def _json(request: Request) -> Any:
    raw = await request.body()
    return json.loads(raw) if raw.strip() else {}


def admin_routes(state: OrgState, settings: Settings,
                 request_log: RequestLog | None = None) -> list[BaseRoute]:
    def allowed(request: Request) -> bool:
        host = request.client.host if request.client else ""
        return not settings.admin_loopback_only or host in _LOOPBACK or host.startswith("127.")

    def guard(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            if not allowed(request):
                return _error(403, "admin API is loopback-only")
            try:
                return await handler(request)
            except json.JSONDecodeError as exc:
                return _error(400, f"invalid JSON: {exc}")
        return wrapped

    async def reset(request: Request) -> Response:
        state.reset()
        return json_response({"ok": True})

    async def seed(request: Request) -> Response:
        body = await _json(request)
        groups = body.get("records") if isinstance(body, dict) else None
        if not isinstance(groups, dict):
            return _error(400, 'expected {"records": {"Type": [{...}]}}')
        ctx = Ctx(state, state.integration_user_id, admin=True)
        created: dict[str, list[str]] = {}
        with state.lock:
            savepoint = state.begin()
            try:
                for type_name, rows in groups.items():
                    sobj = get_sobject(type_name)
                    if sobj is None or not isinstance(rows, list):
                        raise SfError(400, "INVALID_TYPE", f"unknown type {type_name}")
                    ids = created.setdefault(sobj.name, [])
                    for row in rows:
                        fields = _resolve_refs(row, created)
                        if sobj.name == "User":
                            fields = _user_defaults(fields)
                        ids.append(create(ctx, sobj.name, fields, status=400))
            except SfError as err:
                state.rollback(savepoint)
                return json_response(err.rest_body(), err.status)
            finally:
                state.end()
        return json_response({"ids": created})

    async def records(request: Request) -> Response:
        sobj = get_sobject(request.path_params["type"])
        if sobj is None:
            return _error(404, "unknown sObject type")
        ctx = Ctx(state, state.integration_user_id)
        with state.lock:
            rows = [wire_record(ctx, sobj.name, r) for r in state.tables[sobj.name].values()]
        return json_response({"totalSize": len(rows), "records": rows})

    async def stats(request: Request) -> Response:
        with state.lock:
            by_kind = dict(state.stats["by_kind"])
            return json_response({
                "api_calls": sum(by_kind.values()),
                "by_kind": by_kind,
                "api_usage": {"used": state.api_used(), "max": state.config["daily_limit"]},
                "refused": state.stats["refused"],
                "unauthorized": state.stats["unauthorized"],
                "faults": dict(state.stats.get("faults", {})),
                "token_requests": state.stats["token_requests"],
                "sessions": len(state.sessions),
            })

    async def requests_seen(request: Request) -> Response:
        if request_log is None:
            return _error(404, "no request log in this app")
        try:
            since = float(request.query_params.get("since", "0"))
        except ValueError:
            return _error(400, "since: seconds since the epoch")
        return json_response(request_log.counts(since))

    async def config(request: Request) -> Response:
        if request.method == "POST":
            body = await _json(request)
            if not isinstance(body, dict):
                return _error(400, "expected a JSON object")
            unknown = set(body) - set(_CONFIG_KEYS) - _SPECIAL_CONFIG
            if unknown:
                return _error(400, f"unknown config keys: {sorted(unknown)}")
            try:
                values = {k: cast(body[k]) for k, cast in _CONFIG_KEYS.items() if k in body}
                selection = _entities(body["cdc_selected_entities"]) if (
                    "cdc_selected_entities" in body) else None
                usage = int(body["api_usage"]) if "api_usage" in body else None
            except (TypeError, ValueError) as exc:
                return _error(400, f"invalid config value: {exc}")
            with state.lock:
                state.config.update(values)
                if selection is not None:
                    state.cdc.selected = selection
                if usage is not None:
                    state.set_usage(usage)
        with state.lock:
            return json_response({**state.config, "api_usage": state.api_used(),
                                  "cdc_selected_entities": list(state.cdc.selected),
                                  "org_id": state.org_id,
                                  "integration_user_id": state.integration_user_id,
                                  "integration_username": state.integration_username})

    async def expire_sessions(request: Request) -> Response:
        body = await _json(request)
        token = body.get("access_token") if isinstance(body, dict) else None
        with state.lock:
            if token:
                removed = 1 if state.sessions.pop(token, None) is not None else 0
            else:
                removed = len(state.sessions)
                state.sessions.clear()
        return json_response({"expired": removed})

    async def faults(request: Request) -> Response:
        with state.lock:
            if request.method == "DELETE":
                return json_response({"deleted": state.faults.clear()})
            if request.method == "GET":
                return json_response({"rules": [r.to_json() for r in state.faults.rules]})
        body = await _json(request)
        specs = body.get("rules") if isinstance(body, dict) and "rules" in body else body
        if not isinstance(specs, list):
            specs = [specs]
        with state.lock:
            added = []
            try:
                for spec in specs:
                    added.append(state.faults.add(spec))
            except ValueError as exc:
                for rule in added:  # all or nothing
                    state.faults.remove(rule.id)
                return _error(400, str(exc))
            return json_response({"rules": [r.to_json() for r in added]})

    async def fault(request: Request) -> Response:
        with state.lock:
            if state.faults.remove(request.path_params["rule_id"]):
                return json_response({"deleted": 1})
        return _error(404, "no such fault rule")

    async def undelete_records(request: Request) -> Response:
        body = await _json(request)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids:
            return _error(400, 'expected {"ids": ["001...", ...]}')
        ctx = Ctx(state, state.integration_user_id, admin=True)
        with state.lock:
            savepoint = state.begin()
            try:
                restored = [undelete(ctx, str(i)) for i in ids]
            except SfError as err:
                state.rollback(savepoint)
                return json_response(err.rest_body(), err.status)
            finally:
                state.end()
        return json_response({"ids": restored})

    async def cdc_info(request: Request) -> Response:
        with state.lock:
            state.cdc_purge()
            log = state.cdc
            minute = int(state.epoch() // 60)
            return json_response({
                "retained": len(log.events),
                "earliest_replay_id": log.earliest_replay_id,
                "latest_replay_id": log.last_replay_id,
                "selected_entities": list(log.selected),
                "entity_limit": state.config["cdc_entity_limit"],
                "retention_hours": state.config["cdc_retention_hours"],
                "delivery_limit": state.config["cdc_delivery_limit"],
                "delivered": {c: log.delivered_since(c, minute - 24 * 60)
                              for c in list(log.delivered)},
                **({"events": [_event_summary(e) for e in log.events]}
                   if request.query_params.get("events") == "true" else {}),
            })

    async def cdc_gap(request: Request) -> Response:
        body = await _json(request)
        if not isinstance(body, dict):
            return _error(400, "expected a JSON object")
        entity = next((e for e in CDC_ENTITIES if e.lower() == str(body.get("entity")).lower()),
                      None)
        kind = body.get("change_type", "GAP_UPDATE")
        if entity is None or kind not in CHANGE_TYPES or not str(kind).startswith("GAP_"):
            return _error(400, f"expected entity in {list(CDC_ENTITIES)} and a GAP_* "
                               "change_type")
        raw_ids = body.get("record_ids", [])
        ids = [canonical_id(str(i)) for i in raw_ids] if isinstance(raw_ids, list) else [None]
        if None in ids or (kind == "GAP_OVERFLOW") != (not ids):
            return _error(400, "record_ids: valid ids; none for GAP_OVERFLOW, some otherwise")
        with state.lock:
            replay_id = state.cdc.gap(entity, kind, [str(i) for i in ids],
                                      state.integration_user_id, state.epoch_ms())
        return json_response({"replayId": replay_id})

    async def save(request: Request) -> Response:
        if settings.persist_path is None:
            return _error(409, "persistence is not enabled")
        with state.lock:
            state.save(settings.persist_path)
        return json_response({"saved": str(settings.persist_path)})

    return [
        Route("/__admin/reset", guard(reset), methods=["POST"]),
        Route("/__admin/seed", guard(seed), methods=["POST"]),
        Route("/__admin/records/{type}", guard(records), methods=["GET"]),
        Route("/__admin/stats", guard(stats), methods=["GET"]),
        Route("/__admin/requests", guard(requests_seen), methods=["GET"]),
        Route("/__admin/config", guard(config), methods=["GET", "POST"]),
        Route("/__admin/sessions/expire", guard(expire_sessions), methods=["POST"]),
        Route("/__admin/save", guard(save), methods=["POST"]),
        Route("/__admin/faults", guard(faults), methods=["GET", "POST", "DELETE"]),
        Route("/__admin/faults/{rule_id}", guard(fault), methods=["DELETE"]),
        Route("/__admin/undelete", guard(undelete_records), methods=["POST"]),
        Route("/__admin/cdc", guard(cdc_info), methods=["GET"]),
        Route("/__admin/cdc/gap", guard(cdc_gap), methods=["POST"]),
    ]


def _event_summary(event: dict[str, Any]) -> dict[str, Any]:
    header = event["payload"]["ChangeEventHeader"]
    return {"replayId": event["replayId"], "entity": event["entity"],
            "changeType": header["changeType"], "recordIds": header["recordIds"],
            "commitTimestamp": header["commitTimestamp"]}


def _entities(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("cdc_selected_entities must be a list of entity names")
    out: list[str] = []
    for name in value:
        entity = next((e for e in CDC_ENTITIES if e.lower() == str(name).lower()), None)
        if entity is None:
            raise ValueError(f"unknown CDC entity {name!r}")
        if entity not in out:
            out.append(entity)
    return out


def _resolve_refs(row: Any, created: dict[str, list[str]]) -> Any:
    """``"@Account[0]"`` in a seed row means the id of the first Account seeded earlier."""
    if not isinstance(row, dict):
        return row
    out = {}
    for key, value in row.items():
        match = _SEED_REF.match(value) if isinstance(value, str) else None
        if match:
            ids = created.get(match.group(1), [])
            index = int(match.group(2))
            if index >= len(ids):
                raise SfError(400, "INVALID_CROSS_REFERENCE_KEY", f"no seeded {value}")
            value = ids[index]
        out[key] = value
    return out


def _user_defaults(fields: Any) -> Any:
    if not isinstance(fields, dict):
        return fields
    out = dict(fields)
    email = out.get("Email") or out.get("Username")
    out.setdefault("Email", email)
    out.setdefault("Username", email)
    out.setdefault("LastName", str(email or "User").split("@")[0])
    out.setdefault("Alias", str(out["LastName"])[:8])
    return out
