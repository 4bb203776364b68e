"""Log redaction (frontforce/logs.py): the incident guarded is a secret or a masked value
(a card number a customer wrote) reaching a log line, where anyone with log access reads it,
through a keyword argument, a nested record, an error message quoting Salesforce's answer, a
library's own log line or a traceback."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from frontforce import logs
from frontforce.config import PrivacyConfig

CARD = "4111 1111 1111 1111"
SSN = "123-45-6789"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    logs.setup("INFO", fmt="json")
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "_frontforce", False))
    assert isinstance(handler, logging.StreamHandler)
    old = handler.setStream(buf)
    try:
        yield buf
    finally:
        handler.setStream(old)
        logs.use_privacy(PrivacyConfig.model_validate({}))


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_secrets_and_masked_values_never_reach_a_line(captured: io.StringIO) -> None:
    log = structlog.get_logger("sinks.salesforce")
    log.info("command applied", correlation_id="evt_1", record_id="00T000000000001AAA",
             access_token="00Dxx!AQ4AQ", client_secret=SecretStr("s3cr3t"), app_secret="hmac-key",
             headers={"Authorization": "Bearer eyJhbGciOi", "X-Front-Signature": "abc="},
             error=f"FIELD_INTEGRITY_EXCEPTION: value {CARD} not valid; ssn {SSN}",
             message={"id": "msg_1", "text": "hello", "subject": "my card"},
             url="https://x/services/oauth2/token?client_secret=zz&grant_type=client_credentials")
    [line] = lines(captured)
    text = json.dumps(line)
    for leaked in ("00Dxx!AQ4AQ", "s3cr3t", "hmac-key", "eyJhbGciOi", "abc=", CARD, SSN, "hello",
                   "my card", "zz&"):
        assert leaked not in text, leaked
    assert line["correlation_id"] == "evt_1" and line["record_id"] == "00T000000000001AAA"
    assert line["event"] == "command applied" and line["level"] == "info"
    assert line["message"]["id"] == "msg_1" and line["message"]["text"] == logs.NOT_LOGGED
    assert line["client_secret"] == line["access_token"] == logs.REDACTED
    assert "[masked]" in line["error"] and "FIELD_INTEGRITY_EXCEPTION" in line["error"]


def test_numbers_that_are_not_cards_stay(captured: io.StringIO) -> None:
    structlog.get_logger("x").info("batch done", commands=1000, at="commands.salesforce[2]@1234567890123",
                                   phone="+1 415 555 0100", order="1234 5678 9012 3456")  # fails Luhn
    [line] = lines(captured)
    assert line["commands"] == 1000 and line["at"].endswith("@1234567890123")
    assert line["order"] == "1234 5678 9012 3456" and line["phone"] == "+1 415 555 0100"


def test_configured_mask_patterns_library_lines_and_tracebacks(captured: io.StringIO) -> None:
    logs.use_privacy(PrivacyConfig.model_validate({"mask_patterns": [r"\bNIR-\d{6}\b"], "mask_with": "[x]"}))
    logging.getLogger("aiokafka").warning("refused NIR-123456 with token=abc123")
    try:
        raise ValueError(f"cannot encode {CARD}")
    except ValueError:
        structlog.get_logger("y").exception("failed", note="NIR-654321")
    foreign, failed = lines(captured)
    assert foreign["logger"] == "aiokafka" and foreign["level"] == "warning"
    assert "NIR-123456" not in foreign["event"] and "abc123" not in foreign["event"]
    assert failed["note"] == "[x]" and "ValueError" in failed["exception"]
    assert CARD not in failed["exception"]


def test_correlation_id_is_bound_for_a_block(captured: io.StringIO) -> None:
    log = structlog.get_logger("z")
    with logs.bind_correlation("evt_42"):
        log.info("inside")
    log.info("outside")
    inside, outside = lines(captured)
    assert inside["correlation_id"] == "evt_42" and "correlation_id" not in outside


def test_a_line_that_cannot_be_written_never_stops_the_caller(captured: io.StringIO) -> None:
    """A stream closed under the handler (a test runner's capture, a pipe gone) loses the
    line, as stdlib's handler does, and the code that logged goes on."""
    captured.close()
    structlog.get_logger("sinks.salesforce").info("flush done", records=3)  # must not raise
