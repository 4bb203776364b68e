"""Signature and normalization rules of Front webhooks, without a broker."""

from __future__ import annotations

import time

import pytest

from emulators.front import inbound_email_event, sign_app, sign_rule
from sources.front import (
    SignatureError,
    UnsupportedEvent,
    normalize_event,
    verify_app_webhook,
    verify_rule_webhook,
)

SECRET = b"app-secret"


def test_app_signature_accepts_fronts_scheme_and_rejects_tampering() -> None:
    body = b'{"type":"inbound_received"}'
    ts = str(int(time.time() * 1000))
    verify_app_webhook(SECRET, ts, sign_app(SECRET, ts, body), body, 300)
    with pytest.raises(SignatureError, match="mismatch"):
        verify_app_webhook(SECRET, ts, sign_app(SECRET, ts, body), body + b" ", 300)
    with pytest.raises(SignatureError, match="mismatch"):
        verify_app_webhook(b"other", ts, sign_app(SECRET, ts, body), body, 300)


def test_stale_timestamp_is_refused_even_with_a_valid_signature() -> None:
    body = b"{}"
    old = str(int((time.time() - 301) * 1000))
    with pytest.raises(SignatureError, match="stale"):
        verify_app_webhook(SECRET, old, sign_app(SECRET, old, body), body, 300)
    with pytest.raises(SignatureError, match="missing"):
        verify_app_webhook(SECRET, None, "x", body, 300)


def test_rule_webhook_uses_sha1_over_body() -> None:
    body = b'{"id":"evt_1"}'
    verify_rule_webhook(SECRET, sign_rule(SECRET, body), body)
    with pytest.raises(SignatureError):
        verify_rule_webhook(SECRET, sign_app(SECRET, "1", body), body)


def test_inbound_event_normalizes_to_message_with_sender() -> None:
    ev = inbound_email_event(base_url="https://x", event_id="evt_1", conversation_id="cnv_1",
                             message_id="msg_1", inbox_id="inb_1", sender="Bob@Corp.com",
                             sender_name="Bob", to="support@acme.example", subject="Hi",
                             text="Hello", emitted_at=1703102616.412)
    ev["target"]["data"]["recipients"][0]["_links"]["related"]["contact"] = (
        "https://acme.api.frontapp.com/contacts/crd_2njtoem")
    ev["conversation"]["custom_fields"] = {"Priority": "High", "Seats": 25, "Ratio": 0.5,
                                           "VIP": True, "Owner": {"email": "ann@acme.example"}}
    rec = normalize_event(ev, "APP_WEBHOOK", company_id="cmp_1")
    assert rec["event_type"] == "INBOUND_MESSAGE"
    assert rec["occurred_at"] == 1703102616412
    assert rec["inbox_ids"] == ["inb_1"]
    assert rec["message"]["id"] == "msg_1"
    assert {"handle": "Bob@Corp.com", "role": "from", "name": "Bob",
            "contact_id": "crd_2njtoem"} in rec["message"]["recipients"]
    assert {"handle": "support@acme.example", "role": "to", "name": "Support",
            "contact_id": None} in rec["message"]["recipients"]
    assert rec["conversation_custom_fields"] == {"Priority": "High", "Seats": "25", "Ratio": "0.5",
                                                 "VIP": "true", "Owner": "ann@acme.example"}


def test_unknown_event_type_is_kept_as_other_and_garbage_is_refused() -> None:
    rec = normalize_event({"id": "evt_2", "type": "call_started", "emitted_at": 1.0}, "EVENTS_API")
    assert rec["event_type"] == "OTHER" and rec["front_type"] == "call_started"
    with pytest.raises(UnsupportedEvent):
        normalize_event({"type": "inbound", "emitted_at": 1.0}, "APP_WEBHOOK")
