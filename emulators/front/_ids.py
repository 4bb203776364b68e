"""Front-style ids: a resource prefix and a short base-36 string (fact sheet §1.3).

Ids come from one company-wide serial so that no id is ever reused, across resets and
restarts (the serial is persisted). Link ids are ``top_`` (links used to be "topics").
"""

from __future__ import annotations

import hashlib

__all__ = ["PREFIXES", "base36", "make_id", "message_uid"]

PREFIXES = {
    "company": "cmp_",
    "conversation": "cnv_",
    "message": "msg_",
    "comment": "com_",
    "teammate": "tea_",
    "inbox": "inb_",
    "tag": "tag_",
    "link": "top_",
    "contact": "crd_",
    "contact_list": "grp_",
    "account": "acc_",
    "event": "evt_",
    "custom_field": "fld_",
    "rule": "rul_",
    "webhook": "wh_",
}

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
# Real ids look random (cnv_yo1kg5q). Multiplying the serial by a constant coprime to the
# modulus is a bijection on [0, _MOD), so scrambled ids still never collide; the offset
# keeps them 5-7 characters long.
_MOD = 36**6
_MULTIPLIER = 1_000_003  # prime, coprime to 36**6 = 2**12 * 3**12
_OFFSET = 36**4


def base36(n: int) -> str:
    out = []
    while True:
        n, r = divmod(n, 36)
        out.append(_DIGITS[r])
        if n == 0:
            return "".join(reversed(out))


def make_id(kind: str, serial: int) -> str:
    return PREFIXES[kind] + base36(_OFFSET + (serial * _MULTIPLIER) % _MOD)


def message_uid(message_id: str) -> str:
    """32-character secondary id (``alt:uid:`` alias); derived, so stable across restarts."""
    return hashlib.md5(message_id.encode(), usedforsecurity=False).hexdigest()
