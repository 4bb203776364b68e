"""Matching keys and the rules for choosing among candidates.

Keys are strings:

- ``email:<lower-cased address>`` and ``phone:<E.164>``: Contacts and Leads, in the
  partitioned record-match table; both sides of that join are re-keyed by these strings so
  the lookup is co-partitioned (see _app.py).
- ``domain:<web domain>`` (Accounts, from Website; free-mail domains never),
  ``user:<email>`` (Users) and ``id:<record id>`` (Users and Accounts by Id): the small
  global reference table every worker holds whole, read from any partition (the domain of a
  sender, the owner of an Account, the Salesforce User of a Front teammate).

The rule for ambiguity (documented in the README): the kinds are tried in
``worker.match_priority`` order (default Contact, Lead, Account by domain); several records
of one kind on one key: the most recently modified wins, then the lowest Id, the same on
every worker and every replay. Several Accounts on one domain: the lowest Id (the oldest).
Several Users on one email: an active one, then the most recently modified.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import phonenumbers

# Domains whose addresses are people, not companies: never a Lead's Company, never matched
# to an Account by domain. ``worker.free_mail_domains`` adds to it.
FREE_MAIL = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "outlook.com", "hotmail.com", "live.com",
    "msn.com", "icloud.com", "me.com", "aol.com", "proton.me", "protonmail.com", "gmx.com",
    "gmx.de", "web.de", "yandex.ru", "mail.ru", "qq.com", "163.com",
})

PEOPLE = ("Contact", "Lead")
DEFAULT_PRIORITY = ("Contact", "Lead", "Account")
# Objects the reference table holds by Id.
REFERENCE = ("User", "Account")


def normalize_email(address: str | None) -> str | None:
    if not address:
        return None
    addr = address.strip().lower()
    if "@" not in addr or addr.startswith("@") or addr.endswith("@"):
        return None
    return addr


@lru_cache(maxsize=65536)
def normalize_phone(raw: str | None, region: str = "US") -> str | None:
    """E.164 of a phone number as Salesforce or Front holds it ("(415) 555-0100",
    "+44 20 7946 0958", "tel:+1..."), or None when it is not a possible number."""
    if not raw:
        return None
    text = raw.strip().removeprefix("tel:")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def web_domain(website: str | None) -> str | None:
    """The domain of an Account's Website ("https://www.acme.example/about" -> acme.example)."""
    if not website or not website.strip():
        return None
    text = website.strip().lower()
    host = urlsplit(text if "//" in text else f"//{text}").hostname or ""
    host = host.removeprefix("www.").strip(".")
    return host if "." in host else None


def email_domain(email: str) -> str:
    return email.rpartition("@")[2]


def _ts(value: Any) -> int:
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1000)
    return int(value or 0)


def merge_entry(current: dict[str, Any] | None, entry: dict[str, Any]) -> dict[str, Any]:
    """Table value: {record id: entry}. A change older than what we hold is ignored, so
    replays and out-of-order snapshots converge to the newest state."""
    merged = dict(current or {})
    held = merged.get(entry["id"])
    if held is not None and held["ts"] > entry["ts"]:
        return merged
    if entry["deleted"]:
        merged.pop(entry["id"], None)
    else:
        merged[entry["id"]] = entry
    return merged


def _newest(of_kind: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    return min(of_kind, key=lambda c: (-c["ts"], c["id"]), default=None)


def choose_match(candidates: dict[str, Any] | None,
                 priority: Iterable[str] = PEOPLE) -> dict[str, Any] | None:
    """Highest-priority kind wins; among duplicates of one kind, the most recently modified
    record, then the lowest id (deterministic on every worker and every replay)."""
    if not candidates:
        return None
    if len(candidates) == 1:  # the usual case: one record holds the handle
        (only,) = candidates.values()
        return only if only["kind"] in priority else None
    for kind in priority:
        found = _newest(c for c in candidates.values() if c["kind"] == kind)
        if found is not None:
            return found
    return None


def choose_account(candidates: dict[str, Any] | None) -> dict[str, Any] | None:
    """Several Accounts on one domain: the lowest Id, i.e. the oldest record."""
    live = [c for c in (candidates or {}).values() if c["kind"] == "Account"]
    return min(live, key=lambda c: c["id"], default=None)


def choose_user(candidates: dict[str, Any] | None) -> dict[str, Any] | None:
    """Several Users on one email: an active one, then the most recently modified."""
    users = [c for c in (candidates or {}).values() if c["kind"] == "User"]
    return _newest(u for u in users if u.get("active", True)) or None


def counterpart_handles(event: dict[str, Any], region: str = "US") -> list[str]:
    """Customer-side handles of a message event, as match keys: the sender of an inbound
    message, the to/cc recipients of an outbound one; ``email:`` for email and
    ``phone:<E.164>`` for SMS, WhatsApp and calls. Teammates' own addresses are not
    customers: Front marks the customer side by role, so the author is never in the list."""
    message = event.get("message")
    if not message:
        return []
    roles = ("from",) if message["is_inbound"] else ("to", "cc")
    keys: list[str] = []
    for r in message["recipients"]:
        if r["role"] not in roles:
            continue
        key = handle_key(r["handle"], region)
        if key and key not in keys:
            keys.append(key)
    return keys


def handle_key(handle: str | None, region: str = "US") -> str | None:
    """A Front handle as a match key: an email, else a phone number, else nothing."""
    email = normalize_email(handle)
    if email:
        return f"email:{email}"
    phone = normalize_phone(handle, region)
    return f"phone:{phone}" if phone else None


# Salesforce field behind each entry field, as change events name it in changed_fields.
_TRACKED = {"account_id": "AccountId", "owner_id": "OwnerId"}
_FULL = frozenset({"SNAPSHOT", "CREATE", "UNDELETE"})
# Opportunities hold no key: their state keeps the Account they belong to (use case 3).
_INDEXED = (*PEOPLE, *REFERENCE, "Opportunity")


def _name(change: dict[str, Any]) -> str | None:
    if change.get("name"):
        return str(change["name"])
    parts = [p for p in (change.get("first_name"), change.get("last_name")) if p]
    return " ".join(parts) or None


def record_update(held: dict[str, Any] | None, change: dict[str, Any], region: str = "US",
                  free_mail: frozenset[str] = FREE_MAIL,
                  ) -> tuple[dict[str, Any] | None, list[tuple[str, dict[str, Any]]]]:
    """A record's new state (the record-keys table value) and the match entries to send for
    ``change``: its current keys with its newest entry, and retractions (``deleted``) of the
    keys it no longer holds. A change event carries only what changed: an UPDATE without
    Email keeps the email held; a DELETE carries no email at all, so the keys come from
    what is held. A change older than the held state changes nothing (a late delivery, a
    re-read overlapping the stream). A converted Lead gives up its keys to its Contact."""
    kind = change["sobject"]
    if kind not in _INDEXED:
        return held, []
    ctype = change["change_type"]
    ts = _ts(change.get("commit_timestamp"))
    if ctype not in (*_FULL, "UPDATE", "DELETE"):
        return held, []  # a gap: the source re-reads it and sends SNAPSHOTs
    if held is not None and held["ts"] > ts:
        return held, []
    old_keys = set(held["keys"]) if held else set()
    before = held or {}
    prev = before.get("entry") or {"account_id": None, "owner_id": None}
    full = ctype in _FULL
    changed = set(change.get("changed_fields") or []) | set(change.get("nulled_fields") or [])

    def now(field: str, *sf: str) -> Any:
        """The field's value after this change: from the change when it carries it (a full
        record, or named in changed_fields), else what is held."""
        if full or changed.intersection(sf) or any(c.startswith(f"{s}.") for s in sf for c in changed):
            return change.get(field)
        return before.get(field)

    entry: dict[str, Any] = {"kind": kind, "id": change["record_id"], "ts": ts, "deleted": False}
    for field, sf in _TRACKED.items():
        entry[field] = change.get(field) if full or sf in changed else prev.get(field)
    email = normalize_email(change.get("email")) if full or "Email" in changed else before.get("email")
    # [Phone, MobilePhone] as E.164 ("" when empty): each is replaced only when it changed.
    phones = [*(before.get("phones") or []), "", ""][:2]
    for i, (field, sf) in enumerate((("phone", "Phone"), ("mobile_phone", "MobilePhone"))):
        if full or sf in changed:
            phones[i] = normalize_phone(change.get(field), region) or ""
    domain = web_domain(change.get("website")) if full or "Website" in changed else before.get("domain")
    # A User's (compound) Name: a change event carries only the part that changed
    # (changed_fields "Name.LastName"), so each part is kept and the name made from both.
    parts = {}
    for field, sf in (("first_name", "FirstName"), ("last_name", "LastName")):
        parts[field] = (change.get(field) if full or sf in changed or f"Name.{sf}" in changed
                        else before.get(field))
    if kind == "User":
        name = (" ".join(p for p in (parts["first_name"], parts["last_name"]) if p) or None
                if full or any(c.startswith(("Name", "FirstName", "LastName")) for c in changed)
                else before.get("name"))
    else:
        name = (_name(change) if full or any(c.startswith(("Name", "FirstName", "LastName"))
                                              for c in changed) else before.get("name"))
    active = (change.get("is_active") is not False) if full or "IsActive" in changed else before.get(
        "active", True)
    gone = ctype == "DELETE" or bool(change.get("is_converted"))
    keys: set[str] = set()
    if not gone:
        if kind in PEOPLE:
            keys = ({f"email:{email}"} if email else set()) | {f"phone:{p}" for p in phones if p}
        elif kind == "User":
            keys = {f"id:{entry['id']}"} | ({f"user:{email}"} if email else set())
            entry.update(email=email, name=name, active=bool(active))
        elif kind == "Account":
            # owns:<User Id>:<Account Id>: that a User owns that Account, so a User's new
            # name reaches the context of their Accounts (use case 3) whichever change
            # arrived first. One key per Account, found by prefix (TableView.scan): one key
            # per User holding all their Accounts grew past the broker's record size at about
            # 7,000 Accounts, and every Account change rewrote all of it.
            owns = {f"owns:{entry['owner_id']}:{entry['id']}"} if entry["owner_id"] else set()
            keys = {f"id:{entry['id']}"} | owns
            if domain and domain not in free_mail:
                keys.add(f"domain:{domain}")
            entry.update(name=name, owner_id=entry["owner_id"])
    if gone:
        entry["deleted"] = True
    out = [(k, {**entry, "deleted": True}) for k in sorted(old_keys - keys)]
    out += [(k, entry) for k in sorted(keys)]
    # Handles we asked Salesforce to add (use case 2): kept until a change shows them.
    asked = [a for a in before.get("asked") or [] if a not in keys]
    state = {"keys": sorted(keys), "email": email, "domain": domain, "phones": phones,
             "name": name, "active": bool(active), "ts": ts, "deleted": ctype == "DELETE",
             "asked": asked, **({"first_name": parts["first_name"], "last_name": parts["last_name"]}
                                if kind == "User" else {}),
             "entry": {k: entry[k] for k in ("kind", "id", "account_id", "owner_id", "ts", "deleted")}}
    return state, out


def is_reference_key(key: str) -> bool:
    """Keys of the global reference table (the rest go to the partitioned record-match)."""
    return key.startswith(("id:", "user:", "domain:", "owns:"))
