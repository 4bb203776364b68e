"""Privacy rules on their own: which events sync, and what of them is masked."""

from __future__ import annotations

from typing import Any

import pytest

from frontforce.config import PrivacyConfig
from frontforce.errors import ConfigError
from frontforce.masking import masker
from streams._privacy import context_fields_shown, excluded, masked, without_excluded


def test_card_numbers_ssns_and_custom_patterns_are_masked_and_nothing_else() -> None:
    mask = masker(PrivacyConfig(mask_patterns=[r"\bNIR-\d{6}\b"]))  # type: ignore[call-arg]
    text = ("Card 4111 1111 1111 1111, other 4111-1111-1111-1112 (fails Luhn), ssn 123-45-6789, "
            "order 2026-12-01, id NIR-123456, phone +1 415 555 0100")
    assert mask(text) == ("Card [masked], other 4111-1111-1111-1112 (fails Luhn), ssn [masked], "
                          "order 2026-12-01, id [masked], phone +1 415 555 0100")
    assert mask(None) is None and mask("") == ""
    event: dict[str, Any] = {"conversation_subject": "Refund to 5555555555554444", "comment_body": None,
             "message": {"text": "ssn 078-05-1120 please", "subject": "hi"}}
    out = masked(event, mask)
    assert out["conversation_subject"] == "Refund to [masked]"
    assert out["message"] == {"text": "ssn [masked] please", "subject": "hi"}
    assert event["message"]["text"] == "ssn 078-05-1120 please"  # the input is not changed


def test_a_card_number_followed_by_its_expiry_or_code_is_masked_and_they_stay() -> None:
    """Customers write the expiry and the code after the number. The card pattern takes the
    digit groups after it too (greedy), and that whole does not pass the Luhn check: the
    card number in it, whole digit groups from the first on, is masked; the rest stays.
    The same rule masks log lines (frontforce/logs.py)."""
    from frontforce.logs import mask_text

    mask = masker(PrivacyConfig())  # type: ignore[call-arg]
    in_place = masker(PrivacyConfig(), keep_length=True)  # type: ignore[call-arg]
    cases = {
        "card 4111 1111 1111 1111 12/27": "card [masked] 12/27",
        "4111111111111111 123 please": "[masked] 123 please",
        "call 5555-5555-5555-4444 2 times": "call [masked] 2 times",
        "exp 12/27 4111 1111 1111 1111": "exp 12/27 [masked]",
        "two: 4111 1111 1111 1111 5555 5555 5555 4444": "two: [masked] [masked]",
        "not one: 4111 1111 1111 1112 12/27": "not one: 4111 1111 1111 1112 12/27",
        "from an HTML mail: 4111\u00a01111\u00a01111\u00a01111.": "from an HTML mail: [masked].",
        "narrow: 4111\u202f1111\u202f1111\u202f1111": "narrow: [masked]",
    }
    for text, want in cases.items():
        assert mask(text) == want, text
        assert mask_text(text) == want, text
        assert len((in_place(text) or "").encode()) == len(text.encode())  # its UTF-8 bytes
        assert "4111 1111 1111 1111" not in (in_place(text) or "")


def test_the_built_in_patterns_match_exactly_what_their_written_out_forms_match() -> None:
    """CARD_NUMBER and US_SSN are written to start on a digit (fast); on random text of
    digits, spaces, dashes and letters they find the same spans as the plain forms of the
    rules (a lookbehind first), among them many card numbers and SSNs and their near misses."""
    import random
    import re

    from frontforce.logs import CARD_NUMBER, US_SSN

    card = re.compile(r"(?<!\d)(?:\d[ \u00a0\u202f-]?){12,18}\d(?!\d)")
    ssn = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
    rng = random.Random(7)
    found = {"card": 0, "ssn": 0}
    for n in range(40_000):
        if n % 2:
            alphabet = "0123456789" * 3 + " -" * 3 + "ab\n\u00a0\u202f"
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        else:  # SSN-shaped, with edge areas, groups and serials, a neighbour either side
            parts = ["".join(rng.choice(rng.choice(["0", "6", "9", "0123456789"])) for _ in range(k))
                     for k in (3, 2, 4)]
            text = rng.choice(["", "x", "1", " "]) + "-".join(parts) + rng.choice(["", "x", "1", " "])
        for name, fast, plain in (("card", CARD_NUMBER, card), ("ssn", US_SSN, ssn)):
            spans = [m.span() for m in plain.finditer(text)]
            assert [m.span() for m in fast.finditer(text)] == spans, (name, text)
            found[name] += len(spans)
    assert found["card"] > 1000 and found["ssn"] > 1000


def test_private_conversations_and_inboxes_outside_the_lists_do_not_sync() -> None:
    allow = PrivacyConfig(inboxes_allow=["inb_sales"], inboxes_deny=["inb_hr"])  # type: ignore[call-arg]
    assert excluded(allow, {"is_private": True, "inbox_ids": ["inb_sales"]}) == "private conversation: never synced"
    assert "inboxes_deny" in (excluded(allow, {"inbox_ids": ["inb_sales", "inb_hr"]}) or "")
    assert "not in privacy.inboxes_allow" in (excluded(allow, {"inbox_ids": ["inb_support"]}) or "")
    assert excluded(allow, {"inbox_ids": ["inb_sales"]}) is None
    assert excluded(allow, {"inbox_ids": []}) is None  # not an inbox event (a tag, an archive)
    assert excluded(PrivacyConfig(), {"inbox_ids": ["inb_any"]}) is None  # type: ignore[call-arg]


def test_a_pattern_that_does_not_compile_is_a_config_error_naming_the_field(tmp_path) -> None:
    from frontforce.config import load_settings

    path = tmp_path / "frontforce.yaml"
    path.write_text("""\
front: {app_secret: "s"}
salesforce: {login_url: "https://x", client_id: "c", client_secret: "s"}
privacy:
  mask_patterns: ["(unclosed"]
""")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "frontforce.yaml:4 privacy.mask_patterns" in str(err.value)  # file, line, field


def _cmd(kind: str, op: dict[str, Any]) -> dict[str, Any]:
    return {"command_id": "c", "operation": (f"frontforce.commands.{kind}", op)}


def test_excluded_fields_never_leave_in_a_command_and_a_command_of_nothing_but_them_goes() -> None:
    exclude = {"Task": frozenset({"Description", "Subject"}), "Lead": frozenset({"Phone"}),
               "Contact": frozenset({"MobilePhone"}), "FeedItem": frozenset({"Body"})}
    task = _cmd("UpsertTask", {"subject": "Refund", "description": "my card...", "owner_id": "005",
                               "status": "Completed", "fields": {"Description": "x", "Priority": "High"}})
    op = without_excluded(task, exclude)["operation"][1]  # type: ignore[index]
    assert (op["subject"], op["description"], op["owner_id"]) == ("", None, "005")
    assert op["fields"] == {"Priority": "High"}  # a Front custom field mapped onto an excluded one
    assert task["operation"][1]["description"] == "my card..."  # the input is not changed
    lead = _cmd("UpsertLead", {"last_name": "Ng", "company": "Acme", "phone": "+1", "email": "a@b"})
    assert without_excluded(lead, exclude)["operation"][1]["phone"] is None  # type: ignore[index]
    update = _cmd("UpdateRecord", {"sobject": "Contact", "record_id": "003", "fields": {
        "MobilePhone": "+1", "Phone": "+2"}, "only_if_blank": ["MobilePhone", "Phone"]})
    op = without_excluded(update, exclude)["operation"][1]  # type: ignore[index]
    assert (op["fields"], op["only_if_blank"]) == ({"Phone": "+2"}, ["Phone"])
    only = _cmd("UpdateRecord", {"sobject": "Contact", "record_id": "003",
                                 "fields": {"MobilePhone": "+1"}, "only_if_blank": []})
    assert without_excluded(only, exclude) is None
    assert without_excluded(_cmd("PostFeedItem", {"parent_id": "003", "body": "x"}), exclude) is None
    close = _cmd("CloseCase", {"case_id": "500", "status": "Closed", "resolution_note": "text"})
    assert without_excluded(close, exclude)["operation"][1]["resolution_note"] is None  # type: ignore[index]
    assert without_excluded(task, {}) is task


def test_context_fields_showing_an_excluded_salesforce_field_are_not_shown() -> None:
    fields = {"ARR": "AnnualRevenue", "Tier": "Type", "Owner": "owner", "Opps": "open_opportunities"}
    assert context_fields_shown(fields, {"Account": frozenset({"AnnualRevenue", "OwnerId"}),
                                         "Opportunity": frozenset({"Amount"})}) == {"Tier": "Type"}
    assert context_fields_shown(fields, {}) == fields


def test_excluding_a_field_a_write_needs_or_an_unknown_object_is_a_config_error(tmp_path) -> None:
    from frontforce.config import load_settings

    path = tmp_path / "frontforce.yaml"
    for body, expect in (("{Lead: [Company]}", "Lead.Company cannot be excluded"),
                         ("{Widget__c: [X]}", "'Widget__c' is not an object")):
        path.write_text(f"""\
front: {{app_secret: "s"}}
salesforce: {{login_url: "https://x", client_id: "c", client_secret: "s"}}
privacy:
  exclude_fields: {body}
""")
        with pytest.raises(ConfigError) as err:
            load_settings(path)
        assert "frontforce.yaml:4 privacy.exclude_fields" in str(err.value) and expect in str(err.value)


CARD, SSN = "4111 1111 1111 1111", "078-05-1120"


def _lane_event(subject: str, text: str) -> dict[str, Any]:
    return {"event_id": "evt_dl", "event_type": "INBOUND_MESSAGE", "front_type": "inbound",
            "occurred_at": 1, "received_at": 1, "source": "APP_WEBHOOK", "conversation_id": "cnv_dl",
            "conversation_subject": subject, "inbox_ids": ["inb_1"],
            "message": {"id": "msg_dl", "channel_type": "email", "is_inbound": True, "created_at": 1,
                        "subject": subject, "text": text, "author_email": None,
                        "recipients": [{"handle": "a@b.example", "role": "from", "name": None}]}}


def test_a_front_events_dead_letter_carries_the_event_masked_decoded_or_not() -> None:
    """What the worker's fast lane puts in a dead letter of a front.events record
    (streams/_fastlane.py ``_masked_value``): a record that decodes comes back masked like
    every topic after front.events, and still decodes; one that does not decode is masked in
    place, byte for byte the same length, so nothing else in it moves."""
    from types import SimpleNamespace

    from frontforce.masking import masked_bytes
    from frontforce.serialization import Serde
    from schemas import load_schema_str
    from streams._fastlane import FastLane
    from tests.test_serialization import FakeRegistry, registry_serving, settings

    cfg = PrivacyConfig()  # type: ignore[call-arg]
    s = settings(FakeRegistry(registry_serving(load_schema_str("front.events"))).url)
    serde = Serde(s)
    topic = s.topics.front_events
    lane = SimpleNamespace(serde=serde, topic=topic, mask=masker(cfg),
                           mask_in_place=masker(cfg, keep_length=True))
    raw = serde.encode(topic, _lane_event(f"Refund {CARD}", f"my ssn is {SSN}"))
    kept = FastLane._masked_value(lane, raw)  # type: ignore[arg-type]
    assert CARD.encode() not in kept and SSN.encode() not in kept
    back = serde.decode(topic, kept, plain=True)
    assert back["conversation_subject"] == back["message"]["subject"] == "Refund [masked]"
    assert back["message"]["text"] == "my ssn is [masked]"
    assert [r["handle"] for r in back["message"]["recipients"]] == ["a@b.example"]

    broken = raw[:-3]  # truncated: does not decode
    kept = FastLane._masked_value(lane, broken)  # type: ignore[arg-type]
    assert kept == broken.replace(CARD.encode(), b"*" * len(CARD)).replace(SSN.encode(), b"*" * len(SSN))
    assert CARD.encode() in broken and SSN.encode() in broken  # there was something to mask
    assert masked_bytes(b"x " + CARD.encode(), lane.mask_in_place) == b"x " + b"*" * len(CARD)
    # Not UTF-8 around it, no-break spaces (two bytes each) in it: still masked, same length.
    nbsp = "4111\u00a01111\u00a01111\u00a01111".encode()
    assert masked_bytes(b"\xff " + nbsp + b" \x80", lane.mask_in_place) == b"\xff " + b"*" * len(nbsp) + b" \x80"
    assert FastLane._masked_value(lane, b"\x01plain garbage") == b"\x01plain garbage"  # type: ignore[arg-type]


def test_a_raw_front_event_is_masked_in_every_string_it_holds() -> None:
    """The Events API backfill's dead letter of an event it cannot store keeps Front's JSON
    with every string masked (sources/front/_backfill.py)."""
    import json

    from frontforce.masking import masked_strings
    from sources.front._backfill import _dead_letter

    raw = {"id": "evt_x", "type": "inbound", "conversation": {"subject": f"card {CARD}", "tags": [
        {"name": f"ssn {SSN}"}]}, "target": {"data": {"text": f"{CARD} again", "count": 3}}}
    mask = masker(PrivacyConfig())  # type: ignore[call-arg]
    assert masked_strings(raw, mask) == {
        "id": "evt_x", "type": "inbound",
        "conversation": {"subject": "card [masked]", "tags": [{"name": "ssn [masked]"}]},
        "target": {"data": {"text": "[masked] again", "count": 3}}}
    letter = _dead_letter(raw, ValueError(f"cannot store {CARD}"), mask)
    assert CARD not in letter["original_value"].decode() and SSN not in letter["original_value"].decode()
    assert json.loads(letter["original_value"])["conversation"]["subject"] == "card [masked]"
    assert letter["error_message"] == "cannot store [masked]"
