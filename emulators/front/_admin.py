"""Admin API under /__admin/ — test control, not part of Front's contract.

Loopback-only, no bearer token, never charged to the rate limit, emits no rate headers.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from emulators.front import _world
from emulators.front._dispatch import Dispatcher
from emulators.front._errors import FrontError
from emulators.front._ratelimit import RateLimiter
from emulators.front._render import absolutize
from emulators.front._simulate import simulate
from emulators.front._store import DEFAULT_CONFIG, FrontState

__all__ = ["Faults", "RequestLog", "admin_routes", "json_response"]

_LOOPBACK = {"127.0.0.1", "::1", "localhost", "testclient"}
_TOKEN_KINDS = ("api", "oauth_client")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


class Faults:
    """Injected failures for resilience tests: the next ``count`` requests matching ``method``
    and path prefix answer ``status``; with ``after_commit`` the write happens first (the
    timeout-after-commit case that doubles non-idempotent POSTs, fact sheet §0.1)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, spec: dict[str, Any]) -> dict[str, Any]:
        fault = {"method": None, "path": "/", "status": 503, "count": 1, "after_commit": False,
                 "delay_s": 0.0}
        unknown = set(spec) - set(fault)
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        fault.update(spec)
        self.items.append(fault)
        return fault

    def take(self, method: str, path: str) -> dict[str, Any] | None:
        for fault in self.items:
            if fault["method"] not in (None, method) or not path.startswith(fault["path"]):
                continue
            fault["count"] -= 1
            if fault["count"] <= 0:
                self.items.remove(fault)
            return fault
        return None


class RequestLog:
    """Every public-API request the emulator answered (method, path, status, time), so a
    test or a benchmark can count what a client spent, per route and per resource."""

    def __init__(self, limit: int = 200_000) -> None:
        self.items: deque[dict[str, Any]] = deque(maxlen=limit)

    def add(self, method: str, path: str, status: int, at: float) -> None:
        self.items.append({"method": method, "path": path, "status": status, "at": at})


def admin_routes(state: FrontState, dispatcher: Dispatcher, limiter: RateLimiter,
                 faults: Faults, persist: Callable[[], str | None],
                 loopback_only: bool = True,
                 requests: RequestLog | None = None) -> list[BaseRoute]:
    request_log = requests if requests is not None else RequestLog()
    Handler = Callable[[Request, Any], Awaitable[Any]]

    def route(path: str, methods: list[str]) -> Callable[[Handler], BaseRoute]:
        def wrap(handler: Handler) -> BaseRoute:
            async def endpoint(request: Request) -> Response:
                host = request.client.host if request.client else ""
                if loopback_only and not (host in _LOOPBACK or host.startswith("127.")):
                    return json_response({"error": "admin API is loopback-only"}, 403)
                raw = await request.body()
                try:
                    body = json.loads(raw) if raw.strip() else {}
                    result = await handler(request, body)
                except json.JSONDecodeError as exc:
                    return json_response({"error": f"invalid JSON: {exc}"}, 400)
                except FrontError as err:
                    return json_response({"error": err.message, **err.body()}, err.status)
                except (TypeError, ValueError, KeyError, RuntimeError) as exc:
                    return json_response({"error": f"{type(exc).__name__}: {exc}"}, 400)
                if isinstance(result, Response):
                    return result
                return json_response(result)
            return Route(path, endpoint, methods=methods)
        return wrap

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    @route("/__admin/reset", ["POST"])
    async def reset(request: Request, body: Any) -> Any:
        await asyncio.to_thread(dispatcher.drain, 5)
        with state.lock:
            state.reset()
            limiter.reset()
            faults.items.clear()
            dispatcher.forget()
        return {"ok": True}

    @route("/__admin/seed", ["POST"])
    async def seed(request: Request, body: Any) -> Any:
        dispatcher.base_url = base(request)  # seeded events may be delivered
        with state.lock:
            return {"ids": _world.seed(state, body)}

    @route("/__admin/state", ["GET"])
    async def dump(request: Request, body: Any) -> Any:
        with state.lock:
            data = state.to_json()
            events = data.pop("events")
            data["event_count"] = len(events)
            if request.query_params.get("events"):
                data["events"] = [absolutize(e["payload"], base(request)) for e in events]
            return data

    @route("/__admin/config", ["GET", "POST"])
    async def config(request: Request, body: Any) -> Any:
        if request.method == "POST":
            unknown = set(body) - set(DEFAULT_CONFIG)
            if unknown:
                raise ValueError(f"unknown config keys: {sorted(unknown)}")
            with state.lock:
                for key, value in body.items():
                    state.config[key] = type(DEFAULT_CONFIG[key])(value)
                limiter.reset()  # a new plan or window starts with a full budget
        with state.lock:
            return dict(state.config)

    @route("/__admin/tokens", ["GET", "POST"])
    async def tokens(request: Request, body: Any) -> Any:
        with state.lock:
            if request.method == "POST":
                if body.get("kind", "api") not in _TOKEN_KINDS or not body.get("token"):
                    raise ValueError(f"expected token and kind in {_TOKEN_KINDS}")
                state.tokens[str(body["token"])] = body.get("kind", "api")
            return dict(state.tokens)

    @route("/__admin/webhooks", ["GET", "POST"])
    async def webhooks(request: Request, body: Any) -> Any:
        dispatcher.base_url = base(request)
        if request.method == "POST":
            try:
                return await asyncio.to_thread(dispatcher.subscribe, body)
            except RuntimeError as exc:  # the receiver failed the challenge
                return json_response({"error": str(exc)}, 400)
        with state.lock:
            subs = list(state.subscriptions.values())
        return {"subscriptions": subs, "deliveries": list(dispatcher.deliveries)}

    @route("/__admin/webhooks/drain", ["POST"])
    async def drain(request: Request, body: Any) -> Any:
        done = await asyncio.to_thread(dispatcher.drain, float(body.get("timeout", 30)))
        return {"drained": done, "deliveries": len(dispatcher.deliveries)}

    @route("/__admin/webhooks/replay", ["POST"])
    async def replay(request: Request, body: Any) -> Any:
        dispatcher.base_url = base(request)
        with state.lock:
            return _world.replay(state, dispatcher, body)

    @route("/__admin/webhooks/{sub_id}", ["DELETE"])
    async def unsubscribe(request: Request, body: Any) -> Any:
        if not dispatcher.unsubscribe(request.path_params["sub_id"]):
            return json_response({"error": "unknown subscription"}, 404)
        return {"ok": True}

    @route("/__admin/simulate/{action}", ["POST"])
    async def simulate_action(request: Request, body: Any) -> Any:
        dispatcher.base_url = base(request)
        with state.lock:
            return simulate(state, request.path_params["action"], body)

    @route("/__admin/merge", ["POST"])
    async def merge(request: Request, body: Any) -> Any:
        dispatcher.base_url = base(request)
        with state.lock:
            return simulate(state, "merge", body)

    @route("/__admin/faults", ["GET", "POST", "DELETE"])
    async def fault_list(request: Request, body: Any) -> Any:
        with state.lock:
            if request.method == "POST":
                faults.add(body)
            elif request.method == "DELETE":
                faults.items.clear()
            return {"faults": list(faults.items)}

    @route("/__admin/requests", ["GET", "DELETE"])
    async def request_list(request: Request, body: Any) -> Any:
        with state.lock:
            if request.method == "DELETE":
                request_log.items.clear()
            return {"requests": list(request_log.items)}

    @route("/__admin/save", ["POST"])
    async def save(request: Request, body: Any) -> Any:
        saved = persist()
        if saved is None:
            return json_response({"error": "persistence is not enabled"}, 409)
        return {"saved": saved}

    return [reset, seed, dump, config, tokens, webhooks, drain, replay, unsubscribe,
            simulate_action, merge, fault_list, request_list, save]
