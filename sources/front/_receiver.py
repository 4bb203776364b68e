"""Webhook receiver: verify, normalize, produce to ``front.events``, and answer 2xx only
after Kafka acknowledged the record (acks=all). Anything else gets a status that tells
Front what happened, and no input gives a 500:

- 413 body larger than ``receiver.max_body_bytes`` (checked on Content-Length and on the
  bytes as they arrive, before the signature: nothing more is read), 408 body not complete
  within ``receiver.read_timeout_s``;
- 401 bad signature or stale timestamp, 403 a company other than ``front.company_id``;
- 400 not JSON, 422 not a Front event (unknown type, missing id, a record that can never be
  stored);
- 503 Kafka did not acknowledge in time (Front retries).

Every refusal is counted by reason (``frontforce_webhooks_refused_total``, served with the
other metrics at ``/metrics``) and logged with its reason, never with the body or a secret.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from frontforce import metrics
from frontforce.config import Settings
from frontforce.errors import FrontforceError, InvalidRecordError
from frontforce.kafka import AsyncProducer
from frontforce.serialization import Serde
from sources.front._gapfill import RefusalRecovery, WebhookWatermark, start_gap_fill
from sources.front._normalize import UnsupportedEvent, event_key, normalize_event
from sources.front._signature import SignatureError, verify_app_webhook, verify_rule_webhook

log = structlog.get_logger("sources.front")

# Defined with every other metric in frontforce.metrics (one name per fact, all processes).
ACCEPTED = metrics.WEBHOOKS_ACCEPTED
REFUSED = metrics.WEBHOOKS_REFUSED


class Refused(Exception):
    """A request we answer with a 4xx/5xx; ``reason`` is the metric label."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """Strict JSON: no NaN/Infinity; nesting too deep for the parser is malformed too."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise Refused(400, "not_json", "body is not JSON") from None


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The raw body, refused before reading past ``limit`` bytes or ``timeout_s`` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 18:
            raise Refused(400, "bad_content_length", "Content-Length is not a byte count")
        if int(declared) > limit:
            raise Refused(413, "too_large", f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Refused(413, "too_large", f"body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, "read_timeout", f"body not received within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise Refused(400, "client_disconnected", "client went away mid-body") from None
    return b"".join(chunks)


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def create_receiver_app(settings: Settings, producer: AsyncProducer, serde: Serde,
                        watermark: WebhookWatermark | None = None,
                        on_shutdown: Callable[[], None] | None = None,
                        recovery: RefusalRecovery | None = None) -> ASGIApp:
    topic = settings.topics.front_events
    app_secret = settings.front.app_secret.get_secret_value().encode()
    rule_secret = (
        settings.front.rule_secret.get_secret_value().encode() if settings.front.rule_secret else None
    )
    timeout = settings.kafka.delivery_timeout_s
    rc = settings.receiver
    company_id = settings.front.company_id
    stats = {"accepted": 0, "refused": 0}

    async def publish(event: dict[str, Any], kind: str) -> Response:
        key = event_key(event)
        try:
            # Inline: an encode takes tens of microseconds, a hop to the thread pool more.
            value = serde.encode(topic, event)
            async with asyncio.timeout(timeout + 1):  # no task per webhook, as wait_for makes
                msg = await producer.produce(topic, key, value)
        except InvalidRecordError as exc:
            # It can never be stored (does not fit the contract, larger than the broker takes):
            # a 4xx, so that Front does not retry it forever. The encoder's message may quote
            # the record, so neither the answer nor the log carries it.
            log.error("event cannot be stored", event_id=str(event["event_id"])[:100],
                      error_class=type(exc.__cause__ or exc).__name__)
            return refuse(Refused(422, "unstorable", "event cannot be stored: it does not fit the"
                                  " front.events contract or the broker's size limit"))
        except (FrontforceError, TimeoutError, OSError) as exc:
            log.warning("kafka did not acknowledge; asking Front to retry",
                        event_id=event["event_id"], error=str(exc))
            REFUSED.labels("kafka_unavailable").inc()
            if recovery is not None:
                recovery.refused(int(event["occurred_at"]))
            return _error(503, "event not stored, retry later", **{"Retry-After": "5"})
        if recovery is not None:
            recovery.stored()
        stats["accepted"] += 1
        ACCEPTED.labels(kind).inc()
        metrics.RECORDS_OUT.labels(topic).inc()
        if watermark is not None:
            watermark.saw(int(event["occurred_at"]))
        log.info("event stored", event_id=event["event_id"], correlation_id=event["event_id"],
                 type=event["front_type"],
                 at=f"{msg.topic()}[{msg.partition()}]@{msg.offset()}")
        return JSONResponse({"status": "stored", "event_id": event["event_id"]})

    def refuse(exc: Refused) -> Response:
        stats["refused"] += 1
        REFUSED.labels(exc.reason).inc()
        log.warning("webhook refused", status=exc.status, reason=exc.reason, detail=str(exc))
        return _error(exc.status, str(exc))

    def as_object(body: bytes) -> dict[str, Any]:
        doc = parse_json(body)
        if not isinstance(doc, dict):
            raise Refused(400, "not_json_object", "body is not a JSON object")
        return doc

    def normalized(payload: dict[str, Any], source: str, **kw: Any) -> dict[str, Any]:
        try:
            return normalize_event(payload, source, **kw)
        except UnsupportedEvent as exc:
            raise Refused(422, "not_an_event", str(exc)) from None
        except (TypeError, ValueError, OverflowError, AttributeError, KeyError) as exc:
            # A shape normalize_event did not foresee: still the sender's fault, still a 4xx.
            raise Refused(422, "not_an_event", f"malformed event: {type(exc).__name__}") from None

    async def app_webhook(request: Request) -> Response:
        try:
            body = await read_body(request, rc.max_body_bytes, rc.read_timeout_s)
            try:
                verify_app_webhook(
                    app_secret,
                    request.headers.get("x-front-request-timestamp"),
                    request.headers.get("x-front-signature"),
                    body,
                    settings.front.max_clock_skew_s,
                )
            except SignatureError as exc:
                raise Refused(401, "bad_signature", str(exc)) from None
            doc = as_object(body)
            company = _obj(doc.get("authorization")).get("id")
            if company_id is not None and company != company_id:
                raise Refused(403, "foreign_company", "webhook for another Front company")
            challenge = request.headers.get("x-front-challenge")
            if challenge is not None or doc.get("type") == "sync":
                # Validation handshake: echo the challenge; a sync is not an event.
                return PlainTextResponse(challenge or "")
            payload = doc.get("payload")
            if not isinstance(payload, dict):
                raise Refused(422, "not_an_event", "application webhook without a payload object")
            envelope = doc.get("type")
            event = normalized(payload, "APP_WEBHOOK",
                               envelope_type=envelope if isinstance(envelope, str) else None,
                               company_id=company if isinstance(company, str) else None)
        except Refused as exc:
            return refuse(exc)
        return await publish(event, "app")

    async def rule_webhook(request: Request) -> Response:
        try:
            if rule_secret is None:
                raise Refused(404, "rules_not_configured", "rule webhooks are not configured")
            body = await read_body(request, rc.max_body_bytes, rc.read_timeout_s)
            try:
                verify_rule_webhook(rule_secret, request.headers.get("x-front-signature"), body)
            except SignatureError as exc:
                raise Refused(401, "bad_signature", str(exc)) from None
            event = normalized(as_object(body), "RULE_WEBHOOK")
        except Refused as exc:
            return refuse(exc)
        return await publish(event, "rule")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", **stats})

    async def metrics_page(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if on_shutdown is not None:
                on_shutdown()

    routes = Starlette(routes=[
        Route("/webhooks/front", app_webhook, methods=["POST"]),
        Route("/webhooks/front/rules", rule_webhook, methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
    ], lifespan=lifespan)
    hot = {"/webhooks/front": app_webhook, "/webhooks/front/rules": rule_webhook}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        """A webhook POST goes straight to its handler (Starlette's routing, middleware and
        ``Request`` cost a sixth of a webhook's CPU); everything else (other methods, the
        other routes, 404, lifespan) through Starlette."""
        handler = hot.get(scope.get("path", "")) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await routes(scope, receive, send)
            return
        response = await handler(_RawRequest(scope, receive))  # type: ignore[arg-type]
        await response(scope, receive, send)

    return app


class _RawRequest:
    """What the webhook handlers read of a request (its headers, its body as it arrives),
    straight from the ASGI scope and ``receive``: Starlette's ``Request`` semantics (the
    first of repeated headers, ``ClientDisconnect`` when the client goes away mid-body)."""

    __slots__ = ("headers", "_receive")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        self.headers = headers
        self._receive = receive

    async def stream(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                if body:
                    yield body
                if not message.get("more_body", False):
                    return
            elif message["type"] == "http.disconnect":
                raise ClientDisconnect()


def worker_app(settings: Settings) -> ASGIApp:
    """One receiver process's app: its own producer and watermark, both closed (the
    watermark flushed) when the process shuts down."""
    from frontforce.kafka import producer_config
    from frontforce.logs import setup, use_privacy

    # A spawned worker starts bare: the same logging, and the same masks, as the CLI's.
    setup(os.environ.get("FRONTFORCE_LOG_LEVEL", "INFO"))
    use_privacy(settings.privacy)
    serde = Serde(settings)
    producer = AsyncProducer(producer_config(settings))
    watermark = WebhookWatermark(settings, serde)

    def close() -> None:
        producer.close()
        watermark.stop()

    app = create_receiver_app(settings, producer, serde, watermark, on_shutdown=close,
                              recovery=RefusalRecovery(settings, serde))
    watermark.start()
    rare_collections()
    return app


def rare_collections() -> None:
    """A webhook makes a few hundred short-lived objects (the body parsed, the event, its
    encode): at Python's default threshold of 700 a young collection ran every few webhooks,
    5 % of the receiver's samples under load (py-spy). What the process holds once its app
    is built (modules, the app) is frozen out of every collection, and a young collection
    waits for 10,000 objects; reference counting frees a webhook's objects, the collector
    only ever finds cycles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def serve(settings: Settings, app_factory: Callable[[Settings], Any], workers: int) -> None:
    """Serve ``app_factory(settings)`` on ``receiver.host:port`` with ``workers`` processes.

    Several processes share one listening socket, bound once by this (supervising) process,
    which restarts a worker that dies; SIGTERM/SIGINT stop them all, each finishing the
    requests it holds. ``app_factory`` must be picklable (a module-level function): each
    worker is a fresh interpreter that builds its own app, producer included.
    """
    import functools

    import uvicorn

    config = uvicorn.Config(functools.partial(app_factory, settings), factory=True,
                            host=settings.receiver.host, port=settings.receiver.port,
                            workers=workers, log_level="warning",
                            # Per request for nothing: no access line is printed at this level,
                            # and nothing here reads the client's address.
                            access_log=False, proxy_headers=False)
    if workers <= 1:
        uvicorn.Server(config).run()
        return
    from uvicorn.supervisors import Multiprocess

    sock = config.bind_socket()
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()


def run_receiver(settings: Settings, workers: int | None = None) -> None:
    """The receiver with ``workers`` processes (default ``receiver.workers``). Each stores its
    own watermark; the gap-fill runs once, here. Several writers of the watermark cursor may
    move it back by the few seconds between them: that only widens the next gap-fill window."""
    serde = Serde(settings)
    # What Front emitted while we were down comes back from the Events API, in the background.
    start_gap_fill(settings, serde)
    serve(settings, worker_app, workers or settings.receiver.workers)
