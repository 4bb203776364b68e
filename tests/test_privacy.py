"""Privacy rules on their own: which events sync, and what of them is masked."""

from __future__ import annotations

from typing import Any

import pytest

from frontforce.config import PrivacyConfig
from frontforce.errors import ConfigError
from streams._privacy import excluded, masked, masker


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
