"""Fault injection (test control through ``/__admin/faults``; never reachable on public paths).

A rule matches requests by method and path (``/__admin/...`` is never matched) and injects one
fault kind:

    latency             sleep ``ms`` milliseconds, then serve normally; with
                        ``"phase": "after"`` serve first (the write is applied and visible
                        at ``/__admin/records``), then hold the response ``ms`` milliseconds
                        (a call that succeeded but whose answer is slow or never arrives)
    outage              503; body ``[{"errorCode":"SERVER_UNAVAILABLE",...}]`` or, with
                        ``"body": "html"``, a maintenance HTML page (edge failures are HTML)
    unable_to_lock_row  every DML of the matched request fails with UNABLE_TO_LOCK_ROW:
                        a 400 array for single-record calls, per-record errors inside HTTP 200
                        collections/composite answers (optionally only for ``sobjects``)
    expired_session     401 ``[{"errorCode":"INVALID_SESSION_ID",...}]``; the presented
                        session is dropped, as if it had timed out (log in again)
    request_limit       403 REQUEST_LIMIT_EXCEEDED, message ``TotalRequests Limit exceeded.``
                        (override with ``"message": "ConcurrentPerOrgLongTxn Limit exceeded."``)

Counters: each matching request increments ``matched``; the fault is applied when ``matched``
is a multiple of ``every_nth`` (default 1); ``dropped`` counts requests whose client left while
this rule held them (see below). After ``times`` applications (default unlimited) the
rule is exhausted: it stays listed (``GET /__admin/faults``) but matches nothing any more.
Any rule may also carry ``ms`` (delay before the fault). When several
rules are due, every delay applies and the first due non-latency rule (in creation order)
decides the response. Faulted requests that never reach a handler (outage, expired_session,
request_limit) are not charged to the API allocation; unable_to_lock_row requests are.

A client that goes away while its request is held before serving (any delay before the
fault, including latency's default ``"phase": "before"``) gets nothing and nothing happens:
the request is dropped without reaching a handler, as a request that never got past the
load balancer; no write, no API call charged. The body is read and the connection watched
during the delay, so a disconnect is seen even when the client had sent everything. After
serving has started (``"phase": "after"``) a disconnect changes nothing: the write stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulators.salesforce._schema import get_sobject

__all__ = ["FAULT_KINDS", "Decision", "FaultInjector", "FaultMiddleware", "FaultRule",
           "LockFault"]

FAULT_KINDS = ("latency", "outage", "unable_to_lock_row", "expired_session", "request_limit")
LOCK_FAULT_SCOPE_KEY = "emulator.lock_fault"
_RULE_KEYS = {"match", "fault", "ms", "times", "every_nth", "message", "body", "sobjects",
              "phase"}
_PHASES = ("before", "after")
_MATCH_KEYS = {"method", "path_regex", "query_regex"}
_OUTAGE_HTML = ("<html><head><title>Service Unavailable</title></head><body>"
                "<h1>Down for Maintenance</h1><p>The server is temporarily unable to service "
                "your request. Please try again later.</p></body></html>")


@dataclass(frozen=True)
class LockFault:
    """Handed to the write path: DML on these sObjects (all when empty) fails."""

    sobjects: tuple[str, ...] = ()
    message: str | None = None

    def applies_to(self, type_name: str) -> bool:
        return not self.sobjects or type_name in self.sobjects


@dataclass
class FaultRule:
    id: str
    fault: str
    methods: frozenset[str] | None = None
    path_regex: str | None = None
    query_regex: str | None = None
    ms: float = 0.0
    times: int | None = None
    every_nth: int = 1
    message: str | None = None
    body: str = "json"
    sobjects: tuple[str, ...] = ()
    phase: str = "before"
    matched: int = 0
    applied: int = 0
    dropped: int = 0
    _path: re.Pattern[str] | None = field(default=None, repr=False)
    _query: re.Pattern[str] | None = field(default=None, repr=False)

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.methods is not None and method.upper() not in self.methods:
            return False
        if self._path is not None and not self._path.search(path):
            return False
        return self._query is None or bool(self._query.search(query))

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.applied >= self.times

    def to_json(self) -> dict[str, Any]:
        match: dict[str, Any] = {}
        if self.methods is not None:
            match["method"] = sorted(self.methods)
        if self.path_regex is not None:
            match["path_regex"] = self.path_regex
        if self.query_regex is not None:
            match["query_regex"] = self.query_regex
        out: dict[str, Any] = {"id": self.id, "match": match, "fault": self.fault,
                               "ms": self.ms, "times": self.times, "every_nth": self.every_nth,
                               "matched": self.matched, "applied": self.applied,
                               "dropped": self.dropped, "exhausted": self.exhausted}
        if self.message is not None:
            out["message"] = self.message
        if self.fault == "outage":
            out["body"] = self.body
        if self.sobjects:
            out["sobjects"] = list(self.sobjects)
        if self.fault == "latency":
            out["phase"] = self.phase
        return out


def _number(spec: dict[str, Any], key: str, default: Any, minimum: float) -> Any:
    value = spec.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ValueError(f"{key} must be a number >= {minimum}")
    return value


@dataclass
class Decision:
    """What the rules due for one request do to it: wait ``before_ms`` before serving,
    answer with ``rule``'s fault (None: serve normally), hold the answer ``after_ms``."""

    before_ms: float = 0.0
    after_ms: float = 0.0
    rule: FaultRule | None = None
    # Rules whose delay held the request before serving (credited when its client leaves).
    holders: list[FaultRule] = field(default_factory=list)


class FaultInjector:
    """The active rules. Memory-only; cleared by ``/__admin/reset``."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []
        self._next = 0

    def clear(self) -> int:
        count = len(self.rules)
        self.rules = []
        return count

    def remove(self, rule_id: str) -> bool:
        before = len(self.rules)
        self.rules = [r for r in self.rules if r.id != rule_id]
        return len(self.rules) != before

    def add(self, spec: Any) -> FaultRule:
        """Validate a rule spec (raises ValueError with a readable message) and store it."""
        if not isinstance(spec, dict):
            raise ValueError("a fault rule must be a JSON object")
        unknown = set(spec) - _RULE_KEYS
        if unknown:
            raise ValueError(f"unknown rule keys: {sorted(unknown)}")
        kind = spec.get("fault")
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault must be one of {list(FAULT_KINDS)}")
        match = spec.get("match", {})
        if not isinstance(match, dict) or set(match) - _MATCH_KEYS:
            raise ValueError(f"match must be an object with keys among {sorted(_MATCH_KEYS)}")
        methods = match.get("method")
        if isinstance(methods, str):
            methods = [methods]
        if methods is not None and not (isinstance(methods, list) and
                                        all(isinstance(m, str) for m in methods)):
            raise ValueError("match.method must be a string or a list of strings")
        patterns = {}
        for key in ("path_regex", "query_regex"):
            text = match.get(key)
            if text is not None:
                try:
                    patterns[key] = re.compile(str(text))
                except re.error as exc:
                    raise ValueError(f"match.{key} is not a valid regex: {exc}") from None
        times = _number(spec, "times", None, 1)
        every_nth = _number(spec, "every_nth", 1, 1)
        ms = _number(spec, "ms", 0, 0)
        if kind == "latency" and ms <= 0:
            raise ValueError("latency needs ms > 0")
        body = spec.get("body", "json")
        if body not in ("json", "html"):
            raise ValueError('body must be "json" or "html"')
        message = spec.get("message")
        if message is not None and not isinstance(message, str):
            raise ValueError("message must be a string")
        phase = spec.get("phase", "before")
        if phase not in _PHASES:
            raise ValueError('phase must be "before" or "after"')
        if phase != "before" and kind != "latency":
            raise ValueError('phase "after" applies to latency only')
        sobjects = spec.get("sobjects") or []
        if not isinstance(sobjects, list):
            raise ValueError("sobjects must be a list of sObject names")
        names = []
        for name in sobjects:
            sobj = get_sobject(name) if isinstance(name, str) else None
            if sobj is None:
                raise ValueError(f"unknown sObject {name!r}")
            names.append(sobj.name)
        self._next += 1
        rule = FaultRule(
            id=f"f{self._next}", fault=kind,
            methods=frozenset(m.upper() for m in methods) if methods is not None else None,
            path_regex=match.get("path_regex"), query_regex=match.get("query_regex"),
            ms=float(ms), times=int(times) if times is not None else None,
            every_nth=int(every_nth), message=message, body=body, sobjects=tuple(names),
            phase=phase,
            _path=patterns.get("path_regex"), _query=patterns.get("query_regex"))
        self.rules.append(rule)
        return rule

    def decide(self, method: str, path: str, query: str) -> Decision:
        """Count a request against every rule; return the delays and the fault to apply."""
        decision = Decision()
        for rule in self.rules:
            if rule.exhausted or not rule.matches(method, path, query):
                continue
            rule.matched += 1
            if rule.matched % rule.every_nth:
                continue
            if rule.fault == "latency":
                rule.applied += 1
                if rule.phase == "after":
                    decision.after_ms += rule.ms
                    continue
            elif decision.rule is None:
                rule.applied += 1
                decision.rule = rule
            else:
                continue
            if rule.ms > 0:
                decision.before_ms += rule.ms
                decision.holders.append(rule)
        return decision


def _json_body(items: list[dict[str, Any]]) -> bytes:
    return json.dumps(items).encode()


class FaultMiddleware:
    """Applies the org's fault rules to every non-admin HTTP request."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/__admin"):
            await self.app(scope, receive, send)
            return
        state = self.state
        query = scope.get("query_string", b"").decode("latin-1")
        with state.lock:
            decision = state.faults.decide(scope["method"], scope["path"], query)
            rule = decision.rule
            if rule is not None:
                faults = state.stats.setdefault("faults", {})
                faults[rule.fault] = faults.get(rule.fault, 0) + 1
                if rule.fault == "expired_session":
                    token = _bearer(scope)
                    if token:
                        state.sessions.pop(token, None)
        if decision.before_ms > 0:
            receive, gone = await _hold(decision.before_ms / 1000.0, receive)
            if gone:
                # The client went away while we held its request: serve nothing, write
                # nothing (it never got past the load balancer).
                with state.lock:
                    for holder in decision.holders:
                        holder.dropped += 1
                return
        if decision.after_ms > 0:
            send = _held_response(decision.after_ms / 1000.0, send)
        if rule is None:
            await self.app(scope, receive, send)
            return
        lock = LockFault(rule.sobjects, rule.message)
        if rule.fault == "unable_to_lock_row" and scope["path"].startswith("/services/data/"):
            await self.app({**scope, LOCK_FAULT_SCOPE_KEY: lock}, receive, send)
            return
        response = _fault_response(rule)
        await response(scope, receive, send)


async def _hold(seconds: float, receive: Receive) -> tuple[Receive, bool]:
    """Wait ``seconds`` while reading the request body and watching the connection.

    Returns a ``receive`` that replays the body read meanwhile, and whether the client
    disconnected. Reading during the wait matters: the server reads from the socket only
    while someone waits on ``receive``, so a peer's close is seen only that way.
    """
    buffered: list[Message] = []
    gone = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return
            buffered.append(message)

    watcher = asyncio.create_task(watch())
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), seconds)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if gone.is_set():
        return receive, True
    pending = list(buffered)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay, False


def _held_response(seconds: float, send: Send) -> Send:
    """A ``send`` that holds the response start ``seconds``: the handler has already run
    (its writes are committed) when the client is kept waiting."""
    held = False

    async def send_late(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and not held:
            held = True
            await asyncio.sleep(seconds)
        await send(message)

    return send_late


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() in ("bearer", "oauth") and token.strip():
                return token.strip()
    return None


def _fault_response(rule: FaultRule) -> Response:
    json_type = "application/json;charset=UTF-8"
    if rule.fault == "outage":
        if rule.body == "html":
            return Response(_OUTAGE_HTML, status_code=503, media_type="text/html")
        message = rule.message or "Service temporarily unavailable. Please try again later."
        return Response(_json_body([{"message": message, "errorCode": "SERVER_UNAVAILABLE"}]),
                        status_code=503, media_type=json_type)
    if rule.fault == "expired_session":
        return Response(_json_body([{"message": rule.message or "Session expired or invalid",
                                     "errorCode": "INVALID_SESSION_ID"}]),
                        status_code=401, media_type=json_type)
    if rule.fault == "request_limit":
        return Response(_json_body([{"message": rule.message or "TotalRequests Limit exceeded.",
                                     "errorCode": "REQUEST_LIMIT_EXCEEDED"}]),
                        status_code=403, media_type=json_type)
    # unable_to_lock_row outside the data API (token endpoint, CDC endpoint).
    return Response(_json_body([{"message": rule.message or "unable to obtain exclusive access "
                                 "to this record", "errorCode": "UNABLE_TO_LOCK_ROW",
                                 "fields": []}]), status_code=400, media_type=json_type)
