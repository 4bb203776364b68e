"""Webhook receiver: verify, normalize, produce to ``front.events``, and answer 2xx only
after Kafka acknowledged the record (acks=all). Anything else gets a status that tells
Front what happened: 401 bad signature or stale timestamp, 400 not JSON, 422 not an event,
503 Kafka did not acknowledge in time (Front retries)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from frontforce.config import Settings
from frontforce.errors import FrontforceError
from frontforce.kafka import AsyncProducer
from frontforce.serialization import Serde
from sources.front._normalize import UnsupportedEvent, normalize_event
from sources.front._signature import SignatureError, verify_app_webhook, verify_rule_webhook

log = structlog.get_logger("sources.front")


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def create_receiver_app(settings: Settings, producer: AsyncProducer, serde: Serde) -> Starlette:
    topic = settings.topics.front_events
    app_secret = settings.front.app_secret.get_secret_value().encode()
    rule_secret = (
        settings.front.rule_secret.get_secret_value().encode() if settings.front.rule_secret else None
    )
    timeout = settings.kafka.delivery_timeout_s
    stats = {"accepted": 0, "refused": 0}

    async def publish(event: dict[str, Any]) -> Response:
        key = (event["conversation_id"] or event["event_id"]).encode()
        try:
            value = await run_in_threadpool(serde.encode, topic, event)
            msg = await asyncio.wait_for(producer.produce(topic, key, value), timeout=timeout + 1)
        except (FrontforceError, TimeoutError, OSError) as exc:
            log.warning("kafka did not acknowledge; asking Front to retry",
                        event_id=event["event_id"], error=str(exc))
            return _error(503, "event not stored, retry later", **{"Retry-After": "5"})
        stats["accepted"] += 1
        log.info("event stored", event_id=event["event_id"], type=event["front_type"],
                 at=f"{msg.topic()}[{msg.partition()}]@{msg.offset()}")
        return JSONResponse({"status": "stored", "event_id": event["event_id"]})

    def refuse(status: int, why: str) -> Response:
        stats["refused"] += 1
        log.warning("webhook refused", status=status, reason=why)
        return _error(status, why)

    def parse_object(body: bytes) -> dict[str, Any] | Response:
        try:
            doc = json.loads(body)
        except ValueError:
            return refuse(400, "body is not JSON")
        if not isinstance(doc, dict):
            return refuse(400, "body is not a JSON object")
        return doc

    async def app_webhook(request: Request) -> Response:
        body = await request.body()
        try:
            verify_app_webhook(
                app_secret,
                request.headers.get("x-front-request-timestamp"),
                request.headers.get("x-front-signature"),
                body,
                settings.front.max_clock_skew_s,
            )
        except SignatureError as exc:
            return refuse(401, str(exc))
        challenge = request.headers.get("x-front-challenge")
        doc = parse_object(body)
        if isinstance(doc, Response):
            return doc
        if challenge is not None or doc.get("type") == "sync":
            # Validation handshake: echo the challenge; a sync is not an event.
            return PlainTextResponse(challenge or "")
        payload = doc.get("payload")
        if not isinstance(payload, dict):
            return refuse(422, "application webhook without a payload object")
        company = (doc.get("authorization") or {}).get("id")
        try:
            event = normalize_event(payload, "APP_WEBHOOK", envelope_type=doc.get("type"),
                                    company_id=company if isinstance(company, str) else None)
        except UnsupportedEvent as exc:
            return refuse(422, str(exc))
        return await publish(event)

    async def rule_webhook(request: Request) -> Response:
        if rule_secret is None:
            return refuse(404, "rule webhooks are not configured")
        body = await request.body()
        try:
            verify_rule_webhook(rule_secret, request.headers.get("x-front-signature"), body)
        except SignatureError as exc:
            return refuse(401, str(exc))
        doc = parse_object(body)
        if isinstance(doc, Response):
            return doc
        try:
            event = normalize_event(doc, "RULE_WEBHOOK")
        except UnsupportedEvent as exc:
            return refuse(422, str(exc))
        return await publish(event)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", **stats})

    return Starlette(routes=[
        Route("/webhooks/front", app_webhook, methods=["POST"]),
        Route("/webhooks/front/rules", rule_webhook, methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
    ])


def run_receiver(settings: Settings) -> None:
    import uvicorn

    from frontforce.kafka import producer_config

    serde = Serde(settings)
    producer = AsyncProducer(producer_config(settings))
    app = create_receiver_app(settings, producer, serde)
    try:
        uvicorn.run(app, host=settings.receiver.host, port=settings.receiver.port,
                    log_level="warning")
    finally:
        producer.close()
