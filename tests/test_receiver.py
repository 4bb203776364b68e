"""The receiver says 2xx only once Kafka has the event: with no broker to acknowledge it,
Front gets a 503 (and retries later) instead of a 200 for an event that was never stored."""

from __future__ import annotations

import time

from starlette.testclient import TestClient

from emulators.front import WebhookEmitter, inbound_email_event, sign_app
from frontforce.config import parse_settings
from frontforce.kafka import AsyncProducer, producer_config
from frontforce.localstack import LocalStack, free_port
from frontforce.serialization import Serde
from sources.front import create_receiver_app


def test_no_broker_ack_means_503_not_200(infra: LocalStack) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    settings = parse_settings(f"""
kafka: {{bootstrap_servers: "{dead}", schema_registry_url: "{infra.registry_url}",
         topic_prefix: "dead.", delivery_timeout_s: 2}}
front: {{app_secret: "s3cret"}}
salesforce: {{login_url: "https://127.0.0.1:1", client_id: "x", client_secret: "y"}}
""")
    producer = AsyncProducer(producer_config(settings))
    try:
        app = create_receiver_app(settings, producer, Serde(settings))
        with TestClient(app) as client:
            emitter = WebhookEmitter("http://testserver/webhooks/front", b"s3cret")
            body = emitter.envelope(inbound_email_event(
                base_url="https://x", event_id="evt_dead1", conversation_id="cnv_dead1",
                message_id="msg_dead1", inbox_id="inb_1", sender="a@b.com", sender_name=None,
                to="support@acme.example", subject="s", text="t", emitted_at=time.time()))
            ts = str(int(time.time() * 1000))
            r = client.post("/webhooks/front", content=body, headers={
                "x-front-request-timestamp": ts, "x-front-signature": sign_app(b"s3cret", ts, body)})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        assert "not stored" in r.json()["error"]
    finally:
        producer.close(timeout=1)
