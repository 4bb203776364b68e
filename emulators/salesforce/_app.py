"""Starlette application: HTTP edges, bearer auth, API-usage metering, persistence hook."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import fields as dataclass_fields
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulators.salesforce._admin import (
    RequestLog,
    RequestLogMiddleware,
    admin_routes,
    json_response,
)
from emulators.salesforce._auth import INVALID_SESSION, OAuthError, check_session, issue_token
from emulators.salesforce._describe import versions
from emulators.salesforce._duplicates import header_options
from emulators.salesforce._errors import SfError
from emulators.salesforce._faults import LOCK_FAULT_SCOPE_KEY, FaultMiddleware
from emulators.salesforce._router import dispatch, route
from emulators.salesforce._settings import Settings
from emulators.salesforce._store import OrgState
from emulators.salesforce._types import NO_BODY, Reply, SubRequest, segments_from_path
from emulators.salesforce._writes import Ctx

__all__ = ["create_app"]

_DATA_PREFIX = "/services/data/"
_STATE_KEYS = ("daily_limit", "page_size", "session_timeout", "duplicate_rules",
               "cdc_retention_hours", "cdc_delivery_limit", "cdc_entity_limit")
# Kinds that are not charged to the daily allocation and never refused for it. Salesforce
# documents /services/data/ (versions) as free; /limits is our choice (unconfirmed upstream)
# so a throttled client can always poll its way out of REQUEST_LIMIT_EXCEEDED.
_FREE_KINDS = frozenset({"limits"})
_LIMIT_EXCEEDED = [{"message": "TotalRequests Limit exceeded.",
                    "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
_NOT_FOUND = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]


class _LimitInfoHeader:
    """Add ``Sforce-Limit-Info: api-usage=N/M`` to every response (fact sheet §1.2, §6.2)."""

    def __init__(self, app: ASGIApp, state: OrgState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                with self.state.lock:
                    value = self.state.limit_info()
                headers = [*message.get("headers", []), (b"sforce-limit-info", value.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


def _render(reply: Reply) -> Response:
    if reply.status == 204 or reply.body is NO_BODY:
        return Response(status_code=reply.status, headers=reply.headers)
    return json_response(reply.body, reply.status, reply.headers)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _parse_body(raw: bytes) -> Any:
    if not raw.strip():
        return NO_BODY
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at [line:{exc.lineno}, column:{exc.colno}]" if isinstance(
            exc, json.JSONDecodeError) else ""
        raise SfError(400, "JSON_PARSER_ERROR",
                      f"Unexpected character in the request body: {exc}{where}") from None


def create_app(state: OrgState | None = None, **settings: Any) -> Starlette:
    """Build the emulator app.

    ``settings`` are ``Settings`` fields (client_id, client_secret, jwt_consumer_key,
    jwt_public_key, jwt_audiences, instance_url, persist_path, admin_loopback_only) plus
    org-level overrides applied to ``state.config``: daily_limit, page_size, session_timeout,
    duplicate_rules, cdc_retention_hours, cdc_delivery_limit, cdc_entity_limit.
    """
    org = state if state is not None else OrgState()
    overrides = {k: settings.pop(k) for k in _STATE_KEYS if k in settings}
    known = {f.name for f in dataclass_fields(Settings)}
    unknown = set(settings) - known
    if unknown:
        raise TypeError(f"unknown emulator settings: {sorted(unknown)}")
    conf = Settings(**settings)
    with org.lock:
        org.config.update({k: v for k, v in overrides.items() if v is not None})

    async def token(request: Request) -> Response:
        body = await request.body()
        with org.lock:
            try:
                payload = issue_token(org, conf, body, request.url.query,
                                      request.headers.get("authorization"), _base_url(request))
            except OAuthError as err:
                return json_response(err.body, err.status)
        return json_response(payload, 200, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def revoke(request: Request) -> Response:
        params = parse_qs((await request.body()).decode("utf-8", "replace"))
        params.update(parse_qs(request.url.query))
        token_value = (params.get("token") or [""])[-1]
        with org.lock:
            org.sessions.pop(token_value, None)
        return Response(status_code=200)

    async def list_versions(request: Request) -> Response:
        # Free and unauthenticated in Salesforce too.
        return json_response(versions())

    async def data(request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        rest = raw_path.decode("latin-1")[len(_DATA_PREFIX):]
        version_segment, _, remainder = rest.partition("/")
        if not (version_segment.startswith("v") and
                version_segment[1:].replace(".", "", 1).isdigit() and
                "." in version_segment):
            return json_response(_NOT_FOUND, 404)
        raw_body = await request.body()
        with org.lock:
            user_id = check_session(org, request.headers.get("authorization"))
            if user_id is None:
                org.stats["unauthorized"] += 1
                return json_response(INVALID_SESSION, 401)
            sub = SubRequest(method=request.method, segments=segments_from_path(remainder),
                             query=parse_qs(request.url.query, keep_blank_values=True),
                             headers={k.lower(): v for k, v in request.headers.items()})
            try:
                kind, _ = route(sub)
            except SfError:
                kind = "unknown"
            if kind not in _FREE_KINDS:
                if org.api_used() >= int(org.config["daily_limit"]):
                    org.stats["refused"] += 1
                    return json_response(_LIMIT_EXCEEDED, 403)
                org.count_call(kind)
            try:
                sub.body = _parse_body(raw_body)
            except SfError as err:
                return json_response(err.rest_body(), err.status)
            rules = header_options(sub.headers.get("sforce-duplicate-rule-header"))
            ctx = Ctx(org, user_id, version_segment[1:],
                      call_client=header_options(
                          sub.headers.get("sforce-call-options")).get("client") or None,
                      allow_duplicates=rules.get("allowsave") == "true",
                      include_record_details=rules.get("includerecorddetails") == "true",
                      lock_fault=request.scope.get(LOCK_FAULT_SCOPE_KEY))
            _, reply = dispatch(ctx, sub)
        return _render(reply)

    async def not_found(request: Request, exc: Exception) -> Response:
        return json_response(_NOT_FOUND, 404)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return json_response([{"errorCode": "METHOD_NOT_ALLOWED",
                               "message": f"HTTP Method '{request.method}' not allowed."}], 405)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # uvicorn runs this on SIGTERM/SIGINT before exiting: the --persist save point.
        if conf.persist_path is not None:
            with org.lock:
                org.save(conf.persist_path)

    methods = ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD"]
    request_log = RequestLog()
    routes = [
        Route("/services/oauth2/token", token, methods=["POST"]),
        Route("/services/oauth2/revoke", revoke, methods=["POST", "GET"]),
        Route("/services/data", list_versions, methods=["GET"]),
        Route("/services/data/", list_versions, methods=["GET"]),
        Route("/services/data/{rest:path}", data, methods=methods),
        *admin_routes(org, conf, request_log),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: method_not_allowed})
    # Fault rules act on public paths only (admin paths pass through untouched).
    app.add_middleware(FaultMiddleware, state=org)
    app.add_middleware(_LimitInfoHeader, state=org)
    app.add_middleware(RequestLogMiddleware, log=request_log)
    app.state.org = org
    app.state.settings = conf
    return app
