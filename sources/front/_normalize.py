"""Front event object (webhook payload or Events API item) -> ``FrontEvent`` record.

Normalize on ``payload.type`` + ``payload.id`` (reference/front-api.md §7.1); the app-webhook
envelope ``type`` is only a fallback. Unknown types are kept as OTHER: nothing is lost.
"""

from __future__ import annotations

import time
from typing import Any

_TYPES = {
    "inbound": "INBOUND_MESSAGE",
    "outbound": "OUTBOUND_MESSAGE",
    "out_reply": "OUTBOUND_MESSAGE",
    "forward": "OUTBOUND_MESSAGE",
    "comment": "COMMENT",
    "mention": "COMMENT",
    "tag": "TAG",
    "untag": "UNTAG",
    "assign": "ASSIGN",
    "unassign": "UNASSIGN",
    "archive": "ARCHIVE",
    "reopen": "REOPEN",
    "move": "MOVE",
}

# Envelope types of application webhooks, when the payload lacks its own type.
_ENVELOPE_TYPES = {
    "inbound_received": "inbound",
    "outbound_sent": "outbound",
    "new_comment_added": "comment",
    "tag_added": "tag",
    "tag_removed": "untag",
    "assignee_changed": "assign",
    "conversation_archived": "archive",
    "conversation_reopened": "reopen",
    "conversation_moved": "move",
}


# Event types Front documents (the Events API enum in Front's OpenAPI spec, EventResponse.type)
# and the application-webhook envelope names (reference/front-api.md §7.1). A type outside
# both is not a Front event: refused (422), never guessed at.
KNOWN_TYPES = frozenset({
    "assign", "unassign", "archive", "reopen", "trash", "restore", "reminder", "comment",
    "mention", "inbound", "outbound", "out_reply", "move", "forward", "tag", "untag",
    "sending_error", "message_bounce_error", "conversations_merged", "link_added",
    "link_removed", "custom_field_updated", "macro_triggered", "topic_identified",
    "ticket_status_update", "call_started", "call_abandoned", "call_queued", "call_on_hold",
    "call_parked", "call_resumed", "call_connected", "call_missed", "call_hangup",
    "call_transferred", "call_transcript_added", "call_voicemail_transcript_added",
    # envelope-only names
    "inbound_received", "outbound_sent", "message_delivery_failed", "conversation_moved",
    "conversation_archived", "conversation_reopened", "conversation_deleted",
    "conversation_restored", "conversation_snoozed", "conversation_snooze_expired",
    "new_comment_added", "assignee_changed", "tag_added", "tag_removed",
})

# Seconds since the epoch that fit an Avro timestamp-millis and mean a real moment.
_MAX_SECONDS = 1e11


class UnsupportedEvent(ValueError):
    """The body is JSON but not a Front event we can normalize: answer 422."""


def _ms(seconds: Any) -> int:
    value = float(seconds)
    if not (0 <= value < _MAX_SECONDS):  # also false for NaN
        raise UnsupportedEvent(f"timestamp {str(seconds)[:40]} is not seconds since the epoch")
    return int(round(value * 1000))


def _obj(value: Any) -> dict[str, Any]:
    """Front sends objects where we read fields; anything else counts as absent."""
    return value if isinstance(value, dict) else {}


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def normalize_event(payload: dict[str, Any], source: str, envelope_type: str | None = None,
                    company_id: str | None = None) -> dict[str, Any]:
    event_id = payload.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise UnsupportedEvent("event has no id")
    front_type = payload.get("type") or _ENVELOPE_TYPES.get(envelope_type or "", envelope_type)
    if not isinstance(front_type, str):
        raise UnsupportedEvent("event has no type")
    if front_type not in KNOWN_TYPES:
        raise UnsupportedEvent(f"unknown event type {front_type[:60]!r}")
    emitted = payload.get("emitted_at")
    if not isinstance(emitted, int | float) or isinstance(emitted, bool):
        raise UnsupportedEvent("event has no numeric emitted_at")
    conv = payload.get("conversation") or {}
    if not isinstance(conv, dict):
        raise UnsupportedEvent("conversation is not an object")
    source_obj = _obj(payload.get("source"))
    source_kind = _obj(source_obj.get("_meta")).get("type")
    target = _obj(payload.get("target"))
    actor_email = None
    if source_kind == "teammate":
        actor_email = _str_or_none(_obj(source_obj.get("data")).get("email"))
    inbox_ids: list[str] = []
    if source_kind == "inboxes":
        data = source_obj.get("data")
        if isinstance(data, list):
            inbox_ids = [i["id"] for i in data if isinstance(i, dict) and isinstance(i.get("id"), str)]
    message = None
    if _obj(target.get("_meta")).get("type") == "message":
        message = _message(_obj(target.get("data")) or {"id": target.get("id")}, emitted)
    return {
        "event_id": event_id,
        "event_type": _TYPES.get(front_type, "OTHER"),
        "front_type": front_type,
        "occurred_at": _ms(emitted),
        "received_at": int(time.time() * 1000),
        "source": source,
        "company_id": company_id,
        "conversation_id": _str_or_none(conv.get("id")),
        "conversation_subject": _str_or_none(conv.get("subject")),
        "inbox_ids": inbox_ids,
        "actor_email": actor_email,
        "message": message,
        "source_kind": source_kind if isinstance(source_kind, str) else None,
        "conversation_recipient": _str_or_none(_obj(conv.get("recipient")).get("handle")),
        # Whom the conversation is assigned to (the teammate whose Salesforce User owns an
        # inbound message's Task, use case 1); an assign event names the new assignee.
        "assignee_email": _str_or_none(_obj(target.get("data")).get("email"))
        if front_type == "assign" and _obj(target.get("_meta")).get("type") == "teammate"
        else _str_or_none(_obj(conv.get("assignee")).get("email")),
        **_tag(target),
        "is_private": conv.get("is_private") is True,
        "conversation_custom_fields": _custom_fields(conv.get("custom_fields")),
    }


def _custom_fields(value: Any) -> dict[str, str | None]:
    """Front custom fields (keyed by display name) as strings: numbers as written (a datetime
    field's value is epoch seconds: Front's payload does not say which), booleans
    ``true``/``false``, a teammate or inbox by its email or id."""
    out: dict[str, str | None] = {}
    for name, v in (value or {}).items() if isinstance(value, dict) else ():
        if v is None or isinstance(v, str):
            out[str(name)] = v
        elif isinstance(v, bool):
            out[str(name)] = "true" if v else "false"
        elif isinstance(v, int | float):
            out[str(name)] = str(int(v)) if float(v).is_integer() else repr(float(v))
        elif isinstance(v, dict) and isinstance(v.get("email") or v.get("id"), str):
            out[str(name)] = str(v.get("email") or v.get("id"))  # a teammate or inbox object
    return out


def event_key(event: dict[str, Any]) -> bytes:
    """Kafka key of a normalized event: its conversation (so one conversation's events share a
    partition), or the event id for events outside any conversation."""
    return str(event["conversation_id"] or event["event_id"]).encode()


def _tag(target: dict[str, Any]) -> dict[str, Any]:
    """tag/untag: the tag's id and name (what tag rules key on)."""
    if _obj(target.get("_meta")).get("type") != "tag":
        return {}
    data = _obj(target.get("data"))
    return {"tag_id": _str_or_none(data.get("id")) or _str_or_none(target.get("id")),
            "tag_name": _str_or_none(data.get("name"))}


def _contact_id(recipient: dict[str, Any]) -> str | None:
    """The Front contact (``crd_…``) a recipient's handle belongs to: the last segment of
    ``_links.related.contact`` (a URL, absolute from Front, or null for no contact)."""
    links = recipient.get("_links")
    related = links.get("related") if isinstance(links, dict) else None
    url = related.get("contact") if isinstance(related, dict) else None
    if not isinstance(url, str):
        return None
    last = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    return last if last.startswith("crd_") else None


def _message(data: dict[str, Any], emitted: float) -> dict[str, Any]:
    msg_id = data.get("id")
    if not isinstance(msg_id, str):
        raise UnsupportedEvent("message target has no id")
    recipients = []
    for r in data.get("recipients") or []:
        if isinstance(r, dict) and isinstance(r.get("handle"), str):
            recipients.append({
                "handle": r["handle"],
                "role": str(r.get("role") or ""),
                "name": _str_or_none(r.get("name")),
                "contact_id": _contact_id(r),
            })
    author = data.get("author")
    created = data.get("created_at", emitted)
    if isinstance(created, bool):
        created = emitted
    return {
        "id": msg_id,
        "channel_type": str(data.get("type") or "email"),
        "is_inbound": bool(data.get("is_inbound", True)),
        "created_at": _ms(created if isinstance(created, int | float) else emitted),
        "subject": _str_or_none(data.get("subject")),
        "text": _str_or_none(data.get("text")) or _str_or_none(data.get("blurb")),
        "author_email": _str_or_none(author.get("email")) if isinstance(author, dict) else None,
        "recipients": recipients,
    }
