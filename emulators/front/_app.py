"""Starlette application: the HTTP edge of the Front Core API emulator.

Order of checks for a public-API request (mirrors what clients observe on Front):
injected fault → bearer auth (401) → company rate budget (429) → route (404/405) →
per-resource guard (429 while budget remains) → 301 for merged conversations → handler.
Every public response carries ``x-ratelimit-*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emulators.front._admin import Faults, RequestLog, admin_routes
from emulators.front._context import NO_BODY, Ctx, Reply
from emulators.front._dispatch import Dispatcher
from emulators.front._errors import FrontError, error_body
from emulators.front._ops import Actor
from emulators.front._query import Query
from emulators.front._ratelimit import Decision, RateLimiter
from emulators.front._render import absolutize
from emulators.front._router import match
from emulators.front._store import FrontState

__all__ = ["create_app"]

log = logging.getLogger("emulators.front")

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]


def _json(body: Any, status: int, headers: dict[str, str]) -> Response:
    return Response(json.dumps(body), status_code=status, headers=headers,
                    media_type="application/json")


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _parse_body(raw: bytes) -> Any:
    if not raw.strip():
        return NO_BODY
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FrontError(400, "Body is not valid JSON") from None


class _Edge:
    def __init__(self, state: FrontState, limiter: RateLimiter, dispatcher: Dispatcher,
                 base_url: str | None) -> None:
        self.state, self.limiter, self.dispatcher = state, limiter, dispatcher
        self.base_url = base_url

    def _bucket(self, kind: str) -> tuple[str, int]:
        if kind == "oauth_client":
            return "oauth", int(self.state.config["oauth_rpm"])
        return "plan", int(self.state.config["rpm"])

    def _too_many(self, decision: Decision, tier: str | None, what: str = "") -> Reply:
        decision.allowed, decision.tier = False, tier
        wait_ms = max(1, round(decision.retry_after_s * 1000))
        # The wait in milliseconds is also in the message, as observed live (fact sheet §6.3).
        return Reply(429, error_body(429, f"Rate limit exceeded{what}. "
                                          f"Please retry in {wait_ms} milliseconds."))

    def handle(self, method: str, path: str, query: str, raw: bytes,
               authorization: str | None, base: str) -> tuple[Reply, Decision]:
        state, config = self.state, self.state.config
        now = time.time()
        window = float(config["window_seconds"])
        kind = state.tokens.get(_bearer(authorization) or "")
        if kind is None:
            bucket, limit = self._bucket("api")
            decision = self.limiter.peek(bucket, limit, window, now)
            return Reply(401, error_body(401, "Invalid or missing bearer token")), decision
        bucket, limit = self._bucket(kind)
        decision = self.limiter.charge(bucket, limit, window, now)
        if not decision.allowed:
            return self._too_many(decision, None), decision
        try:
            route, params = match(method, path)
            # (x-front-tier, guard key, requests, per seconds, wording of the 429 message)
            guard: tuple[str | None, str, int, float, str] | None = None
            if route.tier2 and config["burst_enabled"]:
                guard = ("2", f"tier2:{params['conversation_id']}", int(config["burst_rps"]),
                         1.0, " for tier-2 route")
            elif (method, route.template) == ("POST", "/links"):
                guard = (None, "links", int(config["links_per_minute"]), 60.0, " for this route")
            if guard is not None:
                wait = self.limiter.guard(guard[1], guard[2], guard[3], now)
                if wait is not None:
                    self.limiter.refund(bucket)  # refused requests are not charged
                    refused = Decision(False, limit, decision.remaining + 1, decision.reset, wait)
                    return self._too_many(refused, guard[0], guard[4]), refused
            actor = Actor(kind, state.bots[kind])
            ctx = Ctx(state, actor, method, path, params,
                      Query(parse_qsl(query, keep_blank_values=True), config), _parse_body(raw))
            return route.handler(ctx), decision
        except FrontError as err:
            if err.status == 301:
                return self._moved(path, query, err, base), decision
            return Reply(err.status, err.body(), err.headers), decision
        except Exception:  # an emulator bug: still answer in Front's shape, and say so
            log.exception("front emulator failed on %s %s", method, path)
            return Reply(500, error_body(500, "Emulator error (see its log)")), decision

    @staticmethod
    def _moved(path: str, query: str, err: FrontError, base: str) -> Reply:
        survivor = err.headers["x-merged-into"]
        parts = path.split("/")
        parts[2] = survivor  # /conversations/{id}/… — the id is the third segment
        location = base + "/".join(parts) + (f"?{query}" if query else "")
        return Reply(301, NO_BODY, {"location": location})

    async def serve(self, request: Request) -> Response:
        base = self.base_url or str(request.base_url).rstrip("/")
        self.dispatcher.base_url = base
        path = request.scope["path"]  # percent-decoded: alt:email:a%40b.c == alt:email:a@b.c
        raw = await request.body()
        faults: Faults = request.app.state.faults
        with self.state.lock:
            omit = bool(self.state.config["omit_retry_after"])
            fault = faults.take(request.method, path)
            if fault is not None and not fault["after_commit"]:
                # Refused before reaching Front's API: nothing written, nothing charged.
                bucket, limit = self._bucket("api")
                decision = self.limiter.peek(bucket, limit,
                                             float(self.state.config["window_seconds"]), time.time())
            else:
                reply, decision = self.handle(request.method, path, request.url.query, raw,
                                              request.headers.get("authorization"), base)
        requests: RequestLog = request.app.state.requests
        if fault is not None:
            await asyncio.sleep(float(fault["delay_s"]))
            status = int(fault["status"])
            requests.add(request.method, path, status, time.time())
            return _json(error_body(status, "Injected fault"), status, decision.headers(omit))
        requests.add(request.method, path, reply.status, time.time())
        headers = {**reply.headers, **decision.headers(omit)}
        if reply.body is NO_BODY or request.method == "HEAD":
            return Response(status_code=reply.status, headers=headers)
        return _json(absolutize(reply.body, base), reply.status, headers)


async def _admin_not_found(request: Request) -> Response:
    return _json({"error": f"unknown admin endpoint {request.url.path}"}, 404, {})


def create_app(state: FrontState | None = None, *, token: str | None = None,
               rpm: int | None = None, persist_path: Path | None = None,
               base_url: str | None = None, admin_loopback_only: bool = True) -> Starlette:
    """Build the emulator app around ``state`` (a fresh company by default).

    token: an extra accepted API token; rpm: plan budget; persist_path: saved on shutdown and
    by ``POST /__admin/save``; base_url: links and pagination URLs (default: request URL).
    """
    company = state if state is not None else FrontState()
    with company.lock:
        if token:
            company.tokens[token] = "api"
        if rpm is not None:
            company.config["rpm"] = int(rpm)
    limiter = RateLimiter()
    dispatcher = Dispatcher(company)
    faults = Faults()
    requests = RequestLog()

    def persist() -> str | None:
        if persist_path is None:
            return None
        with company.lock:
            company.save(persist_path)
        return str(persist_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # uvicorn runs this on SIGTERM/SIGINT before exiting: the --persist save point.
        dispatcher.close()
        persist()

    edge = _Edge(company, limiter, dispatcher, base_url)
    routes = [*admin_routes(company, dispatcher, limiter, faults, persist, admin_loopback_only,
                            requests),
              Route("/__admin/{rest:path}", _admin_not_found, methods=_METHODS),
              Route("/{path:path}", edge.serve, methods=_METHODS)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.front = company
    app.state.dispatcher = dispatcher
    app.state.limiter = limiter
    app.state.faults = faults
    app.state.requests = requests
    return app
