"""Privacy rules, applied in the worker's first step, before anything leaves
``front.events``: which conversations sync at all, and what of a message is masked.

- A private conversation never syncs; an inbox outside ``privacy.inboxes_allow`` (when set)
  or inside ``privacy.inboxes_deny`` does not either. Such an event becomes one audit record
  (SKIPPED, with the rule), and nothing else.
- Masking replaces card numbers (13-19 digits with spaces or dashes that pass the Luhn
  check), US social security numbers and every custom pattern of ``privacy.mask_patterns``
  with ``privacy.mask_with`` in the message text, the message subject and the conversation
  subject, before the event is re-keyed, matched, turned into commands or audited: what is
  masked never reaches a topic after ``front.events`` nor Salesforce.
- A dead letter of a Front event (the worker's fast lane, the Events API backfill) carries it
  masked the same way, and its error message too: the dead-letter topic is after
  ``front.events`` as well.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from frontforce.config import PrivacyConfig


def excluded(cfg: PrivacyConfig, event: dict[str, Any]) -> str | None:
    """Why the event must not sync (None: it syncs)."""
    if event.get("is_private"):
        return "private conversation: never synced"
    inboxes = set(event.get("inbox_ids") or [])
    if cfg.inboxes_deny and inboxes & set(cfg.inboxes_deny):
        return f"inbox {sorted(inboxes & set(cfg.inboxes_deny))[0]} is in privacy.inboxes_deny"
    if cfg.inboxes_allow and inboxes and not inboxes & set(cfg.inboxes_allow):
        return f"inbox {sorted(inboxes)[0]} is not in privacy.inboxes_allow"
    return None


def masked(event: dict[str, Any], mask: Callable[[str | None], str | None]) -> dict[str, Any]:
    """The event with its free text masked (a new dict; the input is not changed)."""
    out = dict(event)
    out["conversation_subject"] = mask(event.get("conversation_subject"))
    if event.get("comment_body") is not None:
        out["comment_body"] = mask(event["comment_body"])
    if event.get("message"):
        msg = dict(event["message"])
        msg["text"] = mask(msg.get("text"))
        msg["subject"] = mask(msg.get("subject"))
        out["message"] = msg
    if event.get("conversation_custom_fields"):
        out["conversation_custom_fields"] = {
            k: mask(v) for k, v in event["conversation_custom_fields"].items()}
    return out


# Fields of Salesforce objects a command writes, by command field: what
# ``privacy.exclude_fields`` can keep out of Salesforce. The rest of a command is what makes
# the write possible at all (config.py refuses excluding it).
_WRITES: dict[str, tuple[str, dict[str, str]]] = {
    "UpsertTask": ("Task", {"subject": "Subject", "description": "Description", "owner_id": "OwnerId",
                            "task_subtype": "TaskSubtype",
                            "front_conversation_id": "Front_Conversation_Id__c"}),
    "UpsertLead": ("Lead", {"first_name": "FirstName", "email": "Email", "phone": "Phone",
                            "lead_source": "LeadSource", "owner_id": "OwnerId"}),
    "CloseCase": ("FeedItem", {"resolution_note": "Body"}),
}


@functools.lru_cache(maxsize=256)
def _excluded_keys(kind: str, out_fields: frozenset[str]) -> tuple[str, ...]:
    """The keys of a ``kind`` operation that write a field of ``out_fields`` (once per pair,
    not per command: the stream worker's hot path)."""
    return tuple(key for key, sf in _WRITES[kind][1].items() if sf in out_fields)


def without_excluded(cmd: dict[str, Any], exclude: dict[str, frozenset[str]]) -> dict[str, Any] | None:
    """A Salesforce command with no value for a field ``privacy.exclude_fields`` names on the
    object it writes (a new dict), or None when nothing of it may be written (an update of
    excluded fields only, a Chatter post when FeedItem.Body is excluded). Applied where the
    worker produces commands: an excluded value never reaches commands.salesforce. A Task's
    excluded Subject becomes empty (the sink leaves a blank Subject out)."""
    if not exclude:
        return cmd
    name, op = cmd["operation"]
    kind = name.rsplit(".", 1)[-1]
    if kind == "UpdateRecord":
        out_fields = exclude.get(op["sobject"], frozenset())
        fields = {k: v for k, v in op["fields"].items() if k not in out_fields}
        if not fields:
            return None
        if fields == op["fields"]:
            return cmd
        blank = [f for f in op.get("only_if_blank") or [] if f in fields]
        return {**cmd, "operation": (name, {**op, "fields": fields, "only_if_blank": blank})}
    if kind == "PostFeedItem":
        return None if "Body" in exclude.get("FeedItem", frozenset()) else cmd
    if kind not in _WRITES:
        return cmd
    out_fields = exclude.get(_WRITES[kind][0], frozenset())
    drop = [key for key in _excluded_keys(kind, out_fields) if op.get(key) is not None]
    more = op.get("fields") or {}
    if not drop and not out_fields.intersection(more):
        return cmd
    new_op = dict(op)
    if more:
        new_op["fields"] = {k: v for k, v in more.items() if k not in out_fields}
    for key in drop:
        new_op[key] = "" if key == "subject" else None
    return {**cmd, "operation": (name, new_op)}


def context_fields_shown(fields: dict[str, str], exclude: dict[str, frozenset[str]]) -> dict[str, str]:
    """``worker.context_fields`` without what shows an excluded Salesforce field in Front:
    an Account field, the owner (Account.OwnerId), open Opportunities (Opportunity.Amount or
    StageName)."""
    account = exclude.get("Account", frozenset())
    opportunity = exclude.get("Opportunity", frozenset())
    shown = {}
    for front_name, source in fields.items():
        if source == "owner" and "OwnerId" in account:
            continue
        if source == "open_opportunities" and {"Amount", "StageName"} & opportunity:
            continue
        if source in account:
            continue
        shown[front_name] = source
    return shown
