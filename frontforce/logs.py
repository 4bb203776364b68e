"""Logging: structlog, one JSON object per line on stderr (``FRONTFORCE_LOG_FORMAT=console``
for key=value lines a person reads). Libraries' own log lines (stdlib ``logging``) go
through the same renderer and the same redaction.

What every line may rely on:

- Kafka coordinates as ``topic[partition]@offset`` (``coords``);
- one correlation id per fact: ``correlation_id`` is the Front event id, from the receiver's
  ``event stored`` line to the Salesforce sink's ``command applied`` line that names the
  Salesforce ``record_id`` (``bind_correlation`` puts it on every line of a block);
- never a secret, never what privacy masks (``redact``): a value under a key that names a
  secret (token, secret, password, authorization, signature, cookie, private key...) is
  replaced, a pydantic ``SecretStr`` too; the free text of a Front message (text, subject,
  body, comment, custom field values) is never logged, whatever the key's nesting; any
  other text is passed through the built-in masks (card numbers that pass the Luhn check,
  US social security numbers, the same rules as ``streams/_privacy.py``) and the
  deployment's ``privacy.mask_patterns`` (``use_privacy``), so an error message that quotes
  a record cannot carry one either; ``Bearer`` tokens and ``access_token=`` in URLs are cut.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from pydantic import SecretStr

REDACTED = "[redacted]"
NOT_LOGGED = "[not logged]"

# Keys whose value is a secret (matched as a part of the key, case-insensitively).
_SECRET_KEY = re.compile(
    r"secret|token|passw|authorization|signature|api_?key|private_?key|cookie|session_?id|"
    r"credential|assertion|client_secret", re.I)
# Keys whose value is a Front message's free text (what privacy masks): never logged.
_FREE_TEXT_KEYS = frozenset({
    "text", "body", "subject", "conversation_subject", "comment_body", "description",
    "blurb", "html", "conversation_custom_fields", "custom_fields"})
# The same built-in rules as streams/_privacy.py (kept here: logging must not import the
# stream worker). A card number: 13-19 digits, each but the last maybe followed by one space
# or dash, no digit either side. A US SSN: AAA-GG-SSSS, area not 000, 666 or 9xx, group not
# 00, serial not 0000, no digit either side. Both start with a plain ``\d`` and check what
# precedes it by a lookbehind after it: ``re`` then skips to the next digit in C, where a
# pattern opening on a lookbehind is tried at every position (23 us against 4 for 400
# characters without digits, the stream worker's every message body). The written-out forms
# they are equal to (tests/test_privacy.py checks it on random text):
#   (?<!\d)(?:\d[ \u00a0\u202f-]?){12,18}\d(?!\d)
#   (?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)
# A card number's groups may be apart by a space, a dash, or a no-break space (U+00A0,
# U+202F): text taken from an HTML email (Front's message text) often has &nbsp; there.
CARD_NUMBER = re.compile(r"\d(?<!\d\d)(?:[ \u00a0\u202f-]?\d){12,18}(?!\d)")
US_SSN = re.compile(r"\d(?<!\d\d)\d\d(?<!000)(?<!666)(?<!9\d\d)-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=!-]+")
_URL_SECRET = re.compile(r"(?i)\b(access_token|client_secret|password|token|sig|signature)=[^&\s\"']+")
_MASK_WITH = "[masked]"
# Keys whose string values frontforce makes itself (times, levels, names, ids, record
# coordinates): not masked, a third of a log line's redaction.
_OURS = frozenset({"timestamp", "level", "logger", "at", "outcome", "operation", "command_id",
                   "record_id"})
# Cheap first looks (a log line's values are mostly ids): the patterns only where they can match.
_ANY_DIGIT = re.compile(r"\d")
_MAY_BEAR = re.compile(r"(?i)bearer")
_extra_patterns: list[re.Pattern[str]] = []
_mask_with = _MASK_WITH


def luhn(digits: str) -> bool:
    """The Luhn check of a card number's digits (shared with streams/_privacy.py)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_DIGITS = re.compile(r"\d+")


def mask_cards(span: str, token: Callable[[str], str]) -> str:
    """A match of ``CARD_NUMBER`` with every card number in it replaced by ``token(it)``:
    the longest run of whole digit groups (13-19 digits) that passes the Luhn check, from the
    first group on. The pattern is greedy: a card number followed by its expiry or code
    ("4111 1111 1111 1111 12/27", "4111111111111111 123") matches with those digits, and
    the whole fails the check while the card number in it does not."""
    groups = [(g.start(), g.end()) for g in _DIGITS.finditer(span)]
    out: list[str] = []
    pos = i = 0
    while i < len(groups):
        for j in range(len(groups) - 1, i - 1, -1):  # the longest first
            digits = "".join(span[a:b] for a, b in groups[i:j + 1])
            if 13 <= len(digits) <= 19 and luhn(digits):
                start, end = groups[i][0], groups[j][1]
                out.append(span[pos:start])
                out.append(token(span[start:end]))
                pos, i = end, j + 1
                break
        else:
            i += 1
    if not out:
        return span
    out.append(span[pos:])
    return "".join(out)


def _card(m: re.Match[str]) -> str:
    return mask_cards(m.group(0), lambda _: _mask_with)


def mask_text(text: str) -> str:
    """``text`` with card numbers, US SSNs, configured patterns and bearer tokens masked."""
    if not text:
        return text
    if _ANY_DIGIT.search(text):
        text = CARD_NUMBER.sub(_card, text)
        text = US_SSN.sub(_mask_with, text)
    for pattern in _extra_patterns:
        text = pattern.sub(_mask_with, text)
    if _MAY_BEAR.search(text):
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if "=" in text:
        text = _URL_SECRET.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    return text


def use_privacy(privacy: Any) -> None:
    """Also mask the deployment's ``privacy.mask_patterns`` (a ``PrivacyConfig``) in logs."""
    global _mask_with
    _extra_patterns[:] = [re.compile(p) for p in getattr(privacy, "mask_patterns", [])]
    _mask_with = str(getattr(privacy, "mask_with", _MASK_WITH))


def _clean(key: str, value: Any, depth: int = 0) -> Any:
    if isinstance(value, SecretStr):
        return REDACTED
    if key and _SECRET_KEY.search(key) and value not in (None, "", False):
        return REDACTED
    if key.lower() in _FREE_TEXT_KEYS and value not in (None, "", {}, []):
        return NOT_LOGGED
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if depth > 5:
        return value if isinstance(value, int | float | bool) or value is None else "[nested]"
    if isinstance(value, Mapping):
        return {str(k): _clean(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean("", v, depth + 1) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return mask_text(str(value))


def redact(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: see the module docstring. ``event`` (the message) is masked,
    not dropped."""
    out: dict[str, Any] = {}
    for key, value in event_dict.items():
        if key == "exc_info" or key.startswith("_") or (key in _OURS and type(value) is str):
            out[key] = value
        elif key == "event":
            out[key] = mask_text(str(value))
        else:
            out[key] = _clean(key, value)
    return out


class _Formatter(logging.Formatter):
    """Lines structlog rendered pass as they are; a library's own record (stdlib logging) is
    rendered the same way: its message, level, logger and time, redacted."""

    def __init__(self, render: Any) -> None:
        super().__init__()
        self.render = render

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "_frontforce", False):
            return record.getMessage()
        event: dict[str, Any] = {
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        out = redact(None, record.levelname.lower(), event)
        if isinstance(out.get("exception"), str):
            out["exception"] = mask_text(out["exception"])
        return str(self.render(None, record.levelname.lower(), out))


_Formatter.converter = time.gmtime  # type: ignore[assignment]


_handler: logging.StreamHandler[Any] | None = None


class _Direct:
    """structlog's logger: a line rendered by the processors is written straight to the
    stream of frontforce's handler, under that handler's lock (a library's line through
    stdlib ``logging`` takes the same lock: lines never interleave). No ``LogRecord``, no
    caller lookup: at a line per command, stdlib's path was most of a sink's logging time.
    When something replaced the root handlers (a Faust worker installs its own), the line
    goes through stdlib ``logging`` as before, marked as rendered, for that handler to print."""

    def __init__(self, name: str | None = None, *args: Any) -> None:
        self.name = name or "root"

    def _emit(self, levelno: int, line: str) -> None:
        h = _handler
        if h is not None and h in logging.root.handlers:
            with h.lock:  # type: ignore[union-attr]
                try:
                    stream = h.stream
                    stream.write(line + "\n")
                    stream.flush()
                except Exception:  # noqa: BLE001 - as stdlib's handler: a log line never stops the process
                    if logging.raiseExceptions and sys.stderr is not None:
                        print("--- logging error: a line could not be written ---",
                              file=sys.stderr)
            return
        logging.getLogger(self.name).log(levelno, line, extra={"_frontforce": True})

    def debug(self, line: str) -> None:
        self._emit(logging.DEBUG, line)

    def info(self, line: str) -> None:
        self._emit(logging.INFO, line)

    def warning(self, line: str) -> None:
        self._emit(logging.WARNING, line)

    def error(self, line: str) -> None:
        self._emit(logging.ERROR, line)

    def critical(self, line: str) -> None:
        self._emit(logging.CRITICAL, line)

    exception = error
    fatal = critical
    warn = warning
    msg = info


def setup(level: str = "INFO", fmt: str | None = None) -> None:
    """Log to stderr at ``level``, JSON lines (``fmt`` or ``FRONTFORCE_LOG_FORMAT``:
    ``json``, the default, or ``console`` for key=value lines)."""
    fmt = (fmt or os.environ.get("FRONTFORCE_LOG_FORMAT", "json")).lower()
    render: Any = (structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"])
                   if fmt in ("console", "kv", "text") else structlog.processors.JSONRenderer(default=str))

    def finish(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        if isinstance(event_dict.get("exception"), str):
            event_dict["exception"] = mask_text(event_dict["exception"])
        head = {k: event_dict.pop(k) for k in ("timestamp", "level", "logger", "event") if k in event_dict}
        return str(render(logger, method, {**head, **event_dict}))

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(render))
    handler._frontforce = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_frontforce", False):
            root.removeHandler(h)
    root.addHandler(handler)
    levelno = getattr(logging, level.upper(), logging.INFO)
    root.setLevel(levelno)
    global _handler
    _handler = handler
    for noisy in ("aiokafka", "faust", "mode", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            finish,
        ],
        logger_factory=_Direct,
        wrapper_class=structlog.make_filtering_bound_logger(levelno),
        cache_logger_on_first_use=True,
    )


@contextmanager
def bind_correlation(correlation_id: str | None) -> Iterator[None]:
    """Every log line inside the block carries ``correlation_id`` (the Front event id)."""
    if not correlation_id:
        yield
        return
    with structlog.contextvars.bound_contextvars(correlation_id=correlation_id):
        yield


def coords(topic: str, partition: int, offset: int) -> str:
    return f"{topic}[{partition}]@{offset}"
