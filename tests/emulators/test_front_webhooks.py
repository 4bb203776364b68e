"""Webhooks as Front sends them (fact sheet §7), checked with the product's own signature
verification (sources.front._signature): application webhooks (challenge handshake,
envelope, HMAC-SHA256 over "ts:body"), rule webhooks (bare event, HMAC-SHA1), at least once
with retries and optional duplicates, full or preview payloads."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from emulators.front import WebhookEmitter, inbound_email_event
from tests.emulators.test_front_harness import (
    Front,
    Receiver,
    receivers,
    running_front,
    validator,
)


@pytest.fixture
def front() -> Iterator[Front]:
    with running_front() as emu:
        emu.seed(defaults=True)
        yield emu


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    with receivers() as make:
        yield make


def _subscribe(front: Front, receiver: Receiver, **extra: Any) -> dict[str, Any]:
    secret = receiver.secret.decode()
    sub: dict[str, Any] = front.admin("POST", "webhooks", {
        "url": receiver.url, "kind": receiver.kind, "secret": secret, "backoff_s": 0.01,
        **extra})
    return sub


def _drain(front: Front) -> None:
    assert front.admin("POST", "webhooks/drain", {"timeout": 20})["drained"]


def test_app_webhook_handshake_and_signed_full_event(
        front: Front, receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory(b"app-secret")
    sub = _subscribe(front, receiver)
    company = front.api.get("/me").json()["id"]
    sync = receiver.received[0]
    assert sync.headers["x-front-challenge"] == sub["challenge"]
    assert sync.verified == "app"
    assert sync.json == {"type": "sync", "authorization": {"id": company}}

    sim = front.simulate("inbound", **{"from": "bob@corp.example", "text": "hello"})
    _drain(front)
    [hook] = receiver.events()
    assert hook.verified == "app"
    assert abs(int(hook.headers["x-front-request-timestamp"]) / 1000 - time.time()) < 30
    envelope = hook.json
    assert envelope["type"] == "inbound_received"
    assert envelope["authorization"] == {"id": company}
    payload = envelope["payload"]
    # The full event, identical to what the Events API serves, links on the emulator.
    assert payload == front.api.get(f"/events/{sim['event_ids'][0]}").json()
    assert payload["_links"]["self"].startswith(front.base_url)
    validator().validate("GET", f"/events/{payload['id']}", 200, json.dumps(payload).encode(),
                         "application/json")


def test_receiver_that_does_not_echo_the_challenge_is_refused(
        front: Front, receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory(b"s", echo_challenge=False)
    resp = front.admin_client.post("/__admin/webhooks", json={
        "url": receiver.url, "kind": "app", "secret": "s"})
    assert resp.status_code == 400 and "challenge" in resp.json()["error"]
    assert front.admin("GET", "webhooks")["subscriptions"] == []


def test_api_writes_are_delivered_with_api_source(
        front: Front, receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory(b"app-secret")
    cnv = front.simulate("inbound", **{"from": "bob@corp.example"})["conversation_id"]
    _subscribe(front, receiver)
    tag = front.api.get("/company/tags").json()["_results"][0]["id"]
    front.api.post(f"/conversations/{cnv}/tags", json={"tag_ids": [tag]})
    front.simulate("archive", conversation_id=cnv)
    _drain(front)
    got = [(r.json["type"], r.json["payload"]["source"]["_meta"]["type"])
           for r in receiver.events()]
    assert got == [("tag_added", "api"), ("conversation_archived", "teammate")]


def test_rule_webhook_is_the_bare_event_signed_with_sha1(
        front: Front, receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory(b"rule-api-secret", kind="rule")
    sub = _subscribe(front, receiver)
    assert sub["challenge"] == "" and receiver.received == []  # no handshake for rules
    sim = front.simulate("inbound", **{"from": "bob@corp.example"})
    _drain(front)
    [hook] = receiver.events()
    assert hook.verified == "rule"
    assert "x-front-request-timestamp" not in hook.headers
    assert hook.json["id"] == sim["event_ids"][0] and hook.json["type"] == "inbound"
    assert "authorization" not in hook.json


def test_duplicates_and_type_filter(front: Front,
                                    receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory(b"app-secret")
    _subscribe(front, receiver, duplicate_rate=1.0, types=["inbound"])
    cnv = front.simulate("inbound", **{"from": "bob@corp.example"})["conversation_id"]
    front.simulate("archive", conversation_id=cnv)  # filtered out
    _drain(front)
    hooks = receiver.events()
    assert len(hooks) == 2
    assert hooks[0].json["payload"]["id"] == hooks[1].json["payload"]["id"]
    # Each delivery is signed afresh (new timestamp allowed), both verify.
    assert all(h.verified == "app" for h in hooks)
    [log] = front.admin("GET", "webhooks")["deliveries"]
    assert log["duplicated"] is True and log["status"] == 200


def test_retries_until_success_and_giving_up(front: Front,
                                             receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory(b"app-secret")
    sub = _subscribe(front, receiver, retries=3)
    receiver.fail_next = 2
    front.simulate("inbound", **{"from": "bob@corp.example"})
    _drain(front)
    assert len(receiver.events()) == 3  # 500, 500, 200: same event three times
    assert len({r.json["payload"]["id"] for r in receiver.events()}) == 1
    front.admin("DELETE", f"webhooks/{sub['id']}")

    flaky = receiver_factory(b"app-secret")
    _subscribe(front, flaky, retries=1)
    flaky.fail_next = 10
    front.simulate("inbound", **{"from": "carl@corp.example"})
    _drain(front)
    deliveries = front.admin("GET", "webhooks")["deliveries"]
    assert [(d["status"], d["attempts"]) for d in deliveries] == [(200, 3), (500, 2)]


def test_preview_payloads(front: Front, receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory(b"app-secret")
    _subscribe(front, receiver, preview=True)
    sim = front.simulate("inbound", **{"from": "bob@corp.example"})
    _drain(front)
    payload = receiver.events()[0].json["payload"]
    assert payload["id"] == sim["event_ids"][0]
    assert payload["target"] == {"_meta": {"type": "message"}, "id": sim["message_id"],
                                 "_links": {"self": f"{front.base_url}/messages/"
                                                    f"{sim['message_id']}"}}
    assert set(payload["conversation"]) == {"_links", "id"}


def test_standalone_emitter_keeps_its_api(receiver_factory: Callable[..., Receiver]) -> None:
    """emulators.scenario and the pipeline tests drive WebhookEmitter directly."""
    event = inbound_email_event(base_url="https://x", event_id="evt_1", conversation_id="cnv_1",
                                message_id="msg_1", inbox_id="inb_1", sender="a@b.c",
                                sender_name="A", to="s@x", subject="s", text="t",
                                emitted_at=1.0)
    app = receiver_factory(b"k")
    emitter = WebhookEmitter(app.url, b"k", company_id="cmp_1", retries=3, duplicate_rate=0.0)
    assert emitter.register() and emitter.deliver(event) == 200
    assert app.events()[0].json["payload"] == event and app.events()[0].verified == "app"
    emitter.close()
    rule = receiver_factory(b"k", kind="rule")
    emitter = WebhookEmitter(rule.url, b"k", kind="rule")
    assert emitter.deliver(event) == 200 and rule.events()[0].json == event
    emitter.close()
