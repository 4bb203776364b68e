"""Matching keys and the rule for choosing among candidates.

Keys are strings ``email:<lower-cased address>`` (later ``phone:<E.164>``,
``domain:<domain>``). Both sides of the join are re-keyed by these strings so the lookup is
co-partitioned (see _app.py).
"""

from __future__ import annotations

from typing import Any

# Priority of record kinds when several match the same key (configurable later).
DEFAULT_PRIORITY = ("Contact", "Lead")


def normalize_email(address: str | None) -> str | None:
    if not address:
        return None
    addr = address.strip().lower()
    if "@" not in addr or addr.startswith("@") or addr.endswith("@"):
        return None
    return addr


def match_entries(change: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Index entries a Salesforce change contributes: (match key, entry)."""
    if change["sobject"] not in DEFAULT_PRIORITY:
        return []
    email = normalize_email(change.get("email"))
    if email is None:
        return []
    entry = {
        "kind": change["sobject"],
        "id": change["record_id"],
        "account_id": change.get("account_id"),
        "owner_id": change.get("owner_id"),
        "ts": _ts(change.get("commit_timestamp")),
        "deleted": change["change_type"] == "DELETE",
    }
    return [(f"email:{email}", entry)]


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


def choose_match(candidates: dict[str, Any] | None,
                 priority: tuple[str, ...] = DEFAULT_PRIORITY) -> dict[str, Any] | None:
    """Highest-priority kind wins; among duplicates of one kind, the most recently modified
    record, then the lowest id (deterministic on every worker and every replay)."""
    if not candidates:
        return None
    for kind in priority:
        of_kind = [c for c in candidates.values() if c["kind"] == kind]
        if of_kind:
            return sorted(of_kind, key=lambda c: (-c["ts"], c["id"]))[0]
    return None


def counterpart_handles(event: dict[str, Any]) -> list[str]:
    """Customer-side email handles of a message event: the sender of an inbound message,
    the to/cc recipients of an outbound one."""
    message = event.get("message")
    if not message:
        return []
    roles = ("from",) if message["is_inbound"] else ("to", "cc")
    keys = []
    for r in message["recipients"]:
        if r["role"] in roles:
            email = normalize_email(r["handle"])
            if email:
                keys.append(f"email:{email}")
    return keys


# Salesforce field behind each entry field, as change events name it in changed_fields.
_TRACKED = {"account_id": "AccountId", "owner_id": "OwnerId"}
_FULL = frozenset({"SNAPSHOT", "CREATE", "UNDELETE"})


def record_update(held: dict[str, Any] | None, change: dict[str, Any]
                  ) -> tuple[dict[str, Any] | None, list[tuple[str, dict[str, Any]]]]:
    """A record's new state (the record-keys table value) and the match entries to send for
    ``change``: its current keys with its newest entry, and retractions (``deleted``) of the
    keys it no longer holds. A change event carries only what changed: an UPDATE without
    Email keeps the email held; a DELETE carries no email at all, so the keys come from
    what is held. A change older than the held state changes nothing (a late delivery, a
    re-read overlapping the stream). A converted Lead gives up its keys to its Contact."""
    if change["sobject"] not in DEFAULT_PRIORITY:
        return held, []
    ctype = change["change_type"]
    ts = _ts(change.get("commit_timestamp"))
    if ctype not in (*_FULL, "UPDATE", "DELETE"):
        return held, []  # a gap: the source re-reads it and sends SNAPSHOTs
    if held is not None and held["ts"] > ts:
        return held, []
    old_keys = set(held["keys"]) if held else set()
    prev = held["entry"] if held else {"account_id": None, "owner_id": None}
    full = ctype in _FULL
    changed = set(change.get("changed_fields") or []) | set(change.get("nulled_fields") or [])
    entry = {"kind": change["sobject"], "id": change["record_id"], "ts": ts, "deleted": False}
    for field, sf in _TRACKED.items():
        entry[field] = change.get(field) if full or sf in changed else prev.get(field)
    email = (normalize_email(change.get("email")) if full or "Email" in changed
             else (held or {}).get("email"))
    gone = ctype == "DELETE" or bool(change.get("is_converted"))
    keys = set() if gone or not email else {f"email:{email}"}
    if gone:
        entry["deleted"] = True
    out = [(k, {**entry, "deleted": True}) for k in sorted(old_keys - keys)]
    out += [(k, entry) for k in sorted(keys)]
    state = {"keys": sorted(keys), "email": email, "ts": ts, "deleted": ctype == "DELETE",
             "entry": entry}
    return state, out
