"""Salesforce record ids: key prefixes, the 18-char case-safe checksum, id minting.

A 15-char id is case-sensitive base-62. The 3-char suffix encodes, for each 5-char block, a
bitmask of which characters are upper-case letters (bit i = i-th char of the block), mapped
onto ``A..Z0..5``. Because the suffix records the case, an 18-char id can be matched
case-insensitively: we use it to restore the canonical case (``canonical_id``).
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = [
    "KEY_PREFIXES",
    "canonical_id",
    "checksum",
    "looks_like_id",
    "make_id",
    "to18",
]

_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_RE = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-5]{3})?$")

# Standard key prefixes (fact sheet §8.1). 01g is the query-locator prefix.
KEY_PREFIXES: dict[str, str] = {
    "Account": "001",
    "Contact": "003",
    "Opportunity": "006",
    "Lead": "00Q",
    "Case": "500",
    "User": "005",
    "Task": "00T",
    "Event": "00U",
    "Group": "00G",
    "Organization": "00D",
    "FeedItem": "0D5",
    "EmailMessage": "02s",
    "QueryLocator": "01g",
}


def checksum(id15: str) -> str:
    """Return the 3-char case-safe suffix of a 15-char id."""
    if len(id15) != 15:
        raise ValueError(f"expected 15 characters, got {len(id15)}")
    out = []
    for block in range(3):
        bits = 0
        for i, ch in enumerate(id15[block * 5 : block * 5 + 5]):
            if "A" <= ch <= "Z":
                bits |= 1 << i
        out.append(_SUFFIX_ALPHABET[bits])
    return "".join(out)


def to18(id15: str) -> str:
    return id15 + checksum(id15)


def looks_like_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


def canonical_id(value: str) -> str | None:
    """Normalise a 15- or 18-char id to the canonical 18-char form, or None if malformed.

    For 18-char input the suffix decides the case of each letter, exactly as Salesforce
    treats 18-char ids case-insensitively. A suffix that marks a digit as upper-case is invalid.
    """
    return _canonical(value) if isinstance(value, str) else None


@lru_cache(maxsize=65536)  # pure; every reference of every write goes through it
def _canonical(value: str) -> str | None:
    if not _ID_RE.match(value):
        return None
    if len(value) == 15:
        return to18(value)
    suffix = value[15:].upper()
    chars = list(value[:15])
    for block, code in enumerate(suffix):
        bits = _SUFFIX_ALPHABET.index(code)
        for i in range(5):
            pos = block * 5 + i
            upper = bool(bits & (1 << i))
            ch = chars[pos]
            if ch.isalpha():
                chars[pos] = ch.upper() if upper else ch.lower()
            elif upper:
                return None
    fixed = "".join(chars)
    return to18(fixed)


def _base62(n: int, width: int) -> str:
    digits = []
    while n:
        n, rem = divmod(n, 62)
        digits.append(_BASE62[rem])
    text = "".join(reversed(digits)) or "0"
    if len(text) > width:
        raise OverflowError("id space exhausted")
    return text.rjust(width, "0")


def make_id(prefix: str, serial: int, pod: str = "Fe") -> str:
    """Mint an 18-char id: 3-char prefix + 2-char pod + reserved '0' + 9-char base-62 serial.

    Mirrors the real layout closely enough that ids mix cases (exercising the checksum).
    """
    if len(prefix) != 3 or len(pod) != 2:
        raise ValueError("prefix must be 3 chars and pod 2 chars")
    return to18(prefix + pod + "0" + _base62(serial, 9))
