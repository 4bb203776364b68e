"""The webhook receiver's contract with Front and with whoever else knocks (issue 8, the
hardened receiver): a 2xx only once Kafka has the event; bad input gets the right 4xx,
produces nothing, moves the refusal counter, and the server keeps serving; no input gives
a 500. Run in-process against the real broker and registry."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from emulators.front import WebhookEmitter, inbound_email_event, sign_app, sign_rule
from frontforce.config import Settings, parse_settings
from frontforce.demo import read_topic
from frontforce.kafka import AsyncProducer, ensure_topics, producer_config
from frontforce.localstack import LocalStack, free_port
from frontforce.serialization import Serde
from sources.front import create_receiver_app

SECRET = b"s3cret"
RULE_SECRET = b"rule-s3cret"
COMPANY = "cmp_ours"


def config(infra: LocalStack, prefix: str, bootstrap: str | None = None, **receiver: Any) -> Settings:
    rec = ", ".join(f"{k}: {v}" for k, v in receiver.items())
    return parse_settings(f"""
kafka: {{bootstrap_servers: "{bootstrap or infra.bootstrap}", schema_registry_url: "{infra.registry_url}",
         topic_prefix: "{prefix}", delivery_timeout_s: 5}}
front: {{app_secret: "{SECRET.decode()}", rule_secret: "{RULE_SECRET.decode()}", company_id: "{COMPANY}"}}
receiver: {{{rec}}}
salesforce: {{login_url: "https://127.0.0.1:1", client_id: "x", client_secret: "y"}}
""")


def payload(event_id: str, emitted_at: float | None = None, **over: Any) -> dict[str, Any]:
    ev = inbound_email_event(
        base_url="https://x", event_id=event_id, conversation_id=f"cnv_{event_id}",
        message_id=f"msg_{event_id}", inbox_id="inb_1", sender="a@b.com", sender_name=None,
        to="support@acme.example", subject="s", text="t",
        emitted_at=time.time() if emitted_at is None else emitted_at)
    ev.update(over)
    return ev


def envelope(ev: dict[str, Any], company: str = COMPANY) -> bytes:
    return json.dumps({"type": "inbound_received", "authorization": {"id": company},
                       "payload": ev}).encode()


def signed(body: bytes, ts: str | None = None, secret: bytes = SECRET) -> dict[str, str]:
    ts = ts or str(int(time.time() * 1000))
    return {"x-front-request-timestamp": ts, "x-front-signature": sign_app(secret, ts, body)}


@dataclass
class Receiver:
    client: TestClient
    settings: Settings
    infra: LocalStack

    def post(self, body: bytes, headers: dict[str, str] | None = None,
             path: str = "/webhooks/front") -> httpx.Response:
        raw = {k: v.encode() for k, v in (signed(body) if headers is None else headers).items()}
        return self.client.post(path, content=body, headers=raw)

    def refused(self, reason: str) -> float:
        text = self.client.get("/metrics").text
        m = re.search(rf'^frontforce_webhooks_refused_total{{reason="{reason}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    def stored_ids(self) -> list[str]:
        return [e["event_id"] for e in read_topic(self.infra.bootstrap, self.infra.registry_url,
                                                  self.settings.topics.front_events)]


@pytest.fixture(scope="module")
def receiver(infra: LocalStack) -> Iterator[Receiver]:
    s = config(infra, f"r{uuid.uuid4().hex[:8]}.", max_body_bytes=65536, read_timeout_s=2)
    ensure_topics(s, [s.topics.front_events])
    producer = AsyncProducer(producer_config(s))
    try:
        with TestClient(create_receiver_app(s, producer, Serde(s))) as client:
            yield Receiver(client, s, infra)
    finally:
        producer.close(timeout=2)


def test_good_webhooks_are_stored_then_answered(receiver: Receiver) -> None:
    r = receiver.post(envelope(payload("evt_good1")))
    assert r.status_code == 200 and r.json()["event_id"] == "evt_good1"
    rule_body = json.dumps(payload("evt_rule1")).encode()
    r = receiver.post(rule_body, {"x-front-signature": sign_rule(RULE_SECRET, rule_body)},
                      path="/webhooks/front/rules")
    assert r.status_code == 200
    assert {"evt_good1", "evt_rule1"} <= set(receiver.stored_ids())


BIG = 16 * 1024 * 1024


def _bad_inputs() -> list[tuple[str, int, str, Any]]:
    """(case, status, counter reason, request builder)."""
    def body_of(ev: dict[str, Any], company: str = COMPANY) -> bytes:
        return envelope(ev, company)

    return [
        ("bad signature", 401, "bad_signature",
         lambda: (body_of(payload("evt_b1")), signed(body_of(payload("evt_b1")), secret=b"wrong"))),
        ("stale timestamp", 401, "bad_signature",
         lambda: (body_of(payload("evt_b2")),
                  signed(body_of(payload("evt_b2")), ts=str(int((time.time() - 600) * 1000))))),
        ("400-digit timestamp", 401, "bad_signature",
         lambda: (body_of(payload("evt_b3")), signed(body_of(payload("evt_b3")), ts="9" * 400))),
        ("non-ascii signature", 401, "bad_signature",
         lambda: (body_of(payload("evt_b4")), {"x-front-request-timestamp": str(int(time.time() * 1000)),
                                               "x-front-signature": "é" * 10})),
        ("16 MiB body", 413, "too_large", lambda: (b"{" + b" " * BIG + b"}", None)),
        ("malformed JSON", 400, "not_json", lambda: (b'{"type": "inbound_received", ', None)),
        ("NaN in JSON", 400, "not_json", lambda: (b'{"payload": NaN}', None)),
        ("nesting bomb", 400, "not_json", lambda: (b"[" * 30000 + b"]" * 30000, None)),
        ("JSON array", 400, "not_json_object", lambda: (b"[1, 2]", None)),
        ("unknown event type", 422, "not_an_event",
         lambda: (body_of(payload("evt_b5", type="banana")), None)),
        ("no event id", 422, "not_an_event", lambda: (body_of(payload("evt_b6", id=None)), None)),
        ("emitted_at 1e400", 422, "not_an_event",
         lambda: (body_of(payload("evt_b7")).replace(b'"emitted_at": ', b'"emitted_at": 1e400, "x": '), None)),
        ("foreign company", 403, "foreign_company",
         lambda: (body_of(payload("evt_b8"), company="cmp_theirs"), None)),
        ("lone surrogate", 422, "unstorable",
         lambda: (body_of(payload("evt_b9")).replace(b'"subject": "s"', b'"subject": "\\ud800"'), None)),
    ]


@pytest.mark.parametrize("case,status,reason,build", _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
def test_bad_input_gets_the_right_4xx_produces_nothing_and_is_counted(
        receiver: Receiver, case: str, status: int, reason: str, build: Any) -> None:
    body, headers = build()
    before = receiver.refused(reason)
    r = receiver.post(body, headers)
    assert r.status_code == status, (case, r.text[:200])
    assert receiver.refused(reason) == before + 1
    assert "s3cret" not in r.text
    # still serving, and nothing of the bad request reached the topic
    good = f"evt_after_{uuid.uuid4().hex[:6]}"
    assert receiver.post(envelope(payload(good))).status_code == 200
    ids = receiver.stored_ids()
    assert good in ids
    assert not [i for i in ids if i.startswith("evt_b")]


def test_oversized_body_without_content_length_is_refused_as_it_arrives(receiver: Receiver) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(1024):
            sent += 1
            yield b" " * 4096

    before = receiver.refused("too_large")
    r = receiver.client.post("/webhooks/front", content=chunks(), headers=signed(b"x"))
    assert r.status_code == 413
    assert receiver.refused("too_large") == before + 1


FUZZ_SEED = envelope(payload("evt_fuzz", emitted_at=1796000000.0))
# 200 in the suite; `make drills` runs 10,000.
FUZZ_EXAMPLES = int(os.environ.get("FRONTFORCE_FUZZ_EXAMPLES", "200"))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_webhooks_never_get_a_5xx_and_unsigned_ones_are_never_accepted(
        receiver: Receiver, data: st.DataObject) -> None:
    good = FUZZ_SEED  # fixed bytes: hypothesis replays draws against the same shape
    kind = data.draw(st.sampled_from(["bytes", "mutated", "json", "signed_json"]))
    if kind == "bytes":
        body = data.draw(st.binary(max_size=2048))
    elif kind == "mutated":
        pos = data.draw(st.integers(0, len(good) - 1))
        body = good[:pos] + data.draw(st.binary(min_size=1, max_size=16)) + good[pos + 1:]
    else:
        leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
        doc = data.draw(st.recursive(leaves, lambda c: st.lists(c, max_size=4)
                                     | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20))
        ev = {**payload("evt_fz", emitted_at=1796000000.0), **(doc if isinstance(doc, dict) else {"target": doc})}
        body = envelope(ev)
    sign = kind in ("bytes", "mutated", "signed_json") and data.draw(st.booleans())
    headers = signed(body) if sign else {"x-front-request-timestamp": data.draw(st.text(max_size=30)),
                                         "x-front-signature": data.draw(st.text(max_size=60))}
    r = receiver.post(body, headers)
    assert r.status_code < 500, r.text
    if not sign:
        assert r.status_code == 401 or r.status_code in (400, 413)


def test_after_the_fuzz_a_good_webhook_is_still_stored_and_answered(receiver: Receiver) -> None:
    """Runs after the fuzz (file order): the receiver took all of it and still serves."""
    eid = f"evt_after_fuzz_{uuid.uuid4().hex[:6]}"
    r = receiver.post(envelope(payload(eid)))
    assert r.status_code == 200, r.text
    assert eid in receiver.stored_ids()


def test_a_slow_sender_gets_408_and_the_server_keeps_serving(infra: LocalStack) -> None:
    s = config(infra, f"s{uuid.uuid4().hex[:8]}.", max_body_bytes=65536, read_timeout_s=1)
    producer = AsyncProducer(producer_config(s))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_receiver_app(s, producer, Serde(s)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /webhooks/front HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                         b"Content-Type: application/json\r\n\r\n{\"type\": ")
            started = time.monotonic()
            reply = sock.recv(4096)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
            assert time.monotonic() - started < 5
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
        producer.close(timeout=1)


def test_no_broker_ack_means_503_not_200(infra: LocalStack) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    s = config(infra, "dead.", bootstrap=dead)
    s = s.model_copy(update={"kafka": s.kafka.model_copy(update={"delivery_timeout_s": 2})})
    producer = AsyncProducer(producer_config(s))
    try:
        with TestClient(create_receiver_app(s, producer, Serde(s))) as client:
            emitter = WebhookEmitter("http://testserver/webhooks/front", SECRET)
            body = emitter.envelope(payload("evt_dead1"))
            body = envelope(json.loads(body)["payload"])
            r = client.post("/webhooks/front", content=body, headers=signed(body))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        assert "not stored" in r.json()["error"]
    finally:
        producer.close(timeout=1)


def test_broker_down_while_webhooks_arrive_then_back_every_event_stored(
        infra: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Guards: with no broker the receiver must say 503 (Front retries), never 200; once the
    broker is back, Front's retries store every event (duplicates only as the event id
    dedupes them downstream)."""
    from frontforce.localstack import Ports

    state = tmp_path_factory.mktemp("late-broker")
    late = LocalStack(state_dir=state, stack_state=state / "stack", persist=False,
                      ports=Ports(kafka=free_port(), controller=free_port(), registry=free_port()))
    s = config(infra, "late.", bootstrap=late.bootstrap)  # a broker of its own, the shared registry
    s = s.model_copy(update={"kafka": s.kafka.model_copy(update={"delivery_timeout_s": 2})})
    producer = AsyncProducer(producer_config(s))
    bodies = [envelope(payload(f"evt_late{i}")) for i in range(5)]
    try:
        with TestClient(create_receiver_app(s, producer, Serde(s))) as client:
            for body in bodies:
                assert client.post("/webhooks/front", content=body, headers=signed(body)).status_code == 503
            late.start_infra(kafka_only=True)
            ensure_topics(s, [s.topics.front_events])
            pending = list(bodies)
            deadline = time.monotonic() + 120
            while pending and time.monotonic() < deadline:  # Front's retries
                body = pending.pop(0)
                if client.post("/webhooks/front", content=body, headers=signed(body)).status_code != 200:
                    pending.append(body)
                    time.sleep(1)
            assert not pending, f"{len(pending)} webhooks still refused after the broker came back"
        stored = [e["event_id"] for e in read_topic(late.bootstrap, infra.registry_url, s.topics.front_events)]
        assert set(stored) == {f"evt_late{i}" for i in range(5)}
    finally:
        producer.close(timeout=2)
        late.stop_infra()


def test_an_event_larger_than_the_broker_takes_is_a_422_not_a_500(infra: LocalStack) -> None:
    """Guards: the producer refuses a too-large record synchronously; that used to escape as a
    500, which Front would retry forever."""
    s = config(infra, f"x{uuid.uuid4().hex[:8]}.", max_body_bytes=4_000_000)
    ensure_topics(s, [s.topics.front_events])
    producer = AsyncProducer(producer_config(s))
    try:
        with TestClient(create_receiver_app(s, producer, Serde(s))) as client:
            huge = payload("evt_huge")
            huge["target"]["data"]["text"] = "x" * 1_500_000  # the message body
            body = envelope(huge)
            r = client.post("/webhooks/front", content=body, headers=signed(body))
            assert r.status_code == 422 and "cannot be stored" in r.json()["error"]
            good = envelope(payload("evt_after_huge"))
            assert client.post("/webhooks/front", content=good, headers=signed(good)).status_code == 200
    finally:
        producer.close(timeout=2)
