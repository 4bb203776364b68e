"""Masking of free text by ``privacy``: card numbers (13-19 digits, their groups apart by
spaces, no-break spaces or dashes, that pass the Luhn check), US social security numbers and
``privacy.mask_patterns``. The stream worker masks Front events with it before anything
leaves ``front.events`` (streams/_privacy.py); the dead letters of Front events (the worker's
fast lane, the Events API backfill) are masked with it too. Here, not in streams/, so that a
source can use it without importing the Faust app."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from frontforce.config import PrivacyConfig
from frontforce.logs import CARD_NUMBER, US_SSN, mask_cards

__all__ = ["masked_bytes", "masked_strings", "masker"]


def masker(cfg: PrivacyConfig, keep_length: bool = False) -> Callable[[str | None], str | None]:
    """The masking of free text by ``cfg``. ``keep_length``: each masked span becomes as many
    ``*`` as it has bytes in UTF-8, instead of ``privacy.mask_with``, so that a record's bytes
    keep their lengths (a dead letter of a record that does not decode, masked in place: see
    ``masked_bytes``)."""
    custom = [re.compile(p) for p in cfg.mask_patterns]

    def span_token(span: str) -> str:
        return "*" * len(span.encode("utf-8", "surrogateescape")) if keep_length else cfg.mask_with

    def token(m: re.Match[str]) -> str:
        return span_token(m.group(0))

    def card(m: re.Match[str]) -> str:
        return mask_cards(m.group(0), span_token)

    def mask(text: str | None) -> str | None:
        if not text:
            return text
        if "card_numbers" in cfg.mask_builtin:
            text = CARD_NUMBER.sub(card, text)
        if "us_ssn" in cfg.mask_builtin:
            text = US_SSN.sub(token, text)
        for pattern in custom:
            text = pattern.sub(token, text)
        return text

    return mask


def masked_bytes(data: bytes, mask: Callable[[str | None], str | None]) -> bytes:
    """Raw bytes (a record that does not decode) with what ``mask`` (a ``keep_length``
    masker) finds masked in place: read as UTF-8 (a byte that is not UTF-8 kept as it is),
    each masked span replaced by as many ``*`` as it had bytes, so every length and offset
    in the record stays as it was."""
    return (mask(data.decode("utf-8", "surrogateescape")) or "").encode("utf-8", "surrogateescape")


def masked_strings(value: Any, mask: Callable[[str | None], str | None]) -> Any:
    """A JSON-like value (a raw Front event) with every string in it masked."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: masked_strings(v, mask) for k, v in value.items()}
    if isinstance(value, list):
        return [masked_strings(v, mask) for v in value]
    return value
