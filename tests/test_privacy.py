"""Privacy rules on their own: which events sync, and what of them is masked."""

from __future__ import annotations

from typing import Any

import pytest

from frontforce.config import PrivacyConfig
from frontforce.errors import ConfigError
from streams._privacy import context_fields_shown, excluded, masked, masker, without_excluded


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


def test_the_built_in_patterns_match_exactly_what_their_written_out_forms_match() -> None:
    """CARD_NUMBER and US_SSN are written to start on a digit (fast); on random text of
    digits, spaces, dashes and letters they find the same spans as the plain forms of the
    rules (a lookbehind first), among them many card numbers and SSNs and their near misses."""
    import random
    import re

    from frontforce.logs import CARD_NUMBER, US_SSN

    card = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
    ssn = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
    rng = random.Random(7)
    found = {"card": 0, "ssn": 0}
    for n in range(40_000):
        if n % 2:
            text = "".join(rng.choice("0123456789" * 3 + " -" * 3 + "ab\n") for _ in range(rng.randint(0, 60)))
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
