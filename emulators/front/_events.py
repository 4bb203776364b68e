"""Front event objects shaped like the Events API / webhook payloads
(reference/front-api.md §3.1, §3.2; specs/front-core-api.json EventResponse)."""

from __future__ import annotations

from typing import Any

__all__ = ["APP_WEBHOOK_TYPES", "app_webhook_type", "inbound_email_event"]

# Envelope ``type`` of application webhooks per Events-API type. Names come from third-party
# code (fact sheet §7.1, unconfirmed); receivers should key on ``payload.type`` instead.
APP_WEBHOOK_TYPES = {
    "inbound": "inbound_received",
    "outbound": "outbound_sent",
    "out_reply": "outbound_sent",
    "sending_error": "message_delivery_failed",
    "message_bounce_error": "message_delivery_failed",
    "move": "conversation_moved",
    "archive": "conversation_archived",
    "reopen": "conversation_reopened",
    "trash": "conversation_deleted",
    "restore": "conversation_restored",
    "comment": "new_comment_added",
    "assign": "assignee_changed",
    "unassign": "assignee_changed",
    "tag": "tag_added",
    "untag": "tag_removed",
    "link_added": "link_added",
    "link_removed": "link_removed",
}


def app_webhook_type(event_type: str) -> str:
    return APP_WEBHOOK_TYPES.get(event_type, event_type)


def inbound_email_event(*, base_url: str, event_id: str, conversation_id: str, message_id: str,
                        inbox_id: str, sender: str, sender_name: str | None, to: str,
                        subject: str, text: str, emitted_at: float) -> dict[str, Any]:
    msg = {
        "_links": {"self": f"{base_url}/messages/{message_id}",
                   "related": {"conversation": f"{base_url}/conversations/{conversation_id}"}},
        "id": message_id,
        "type": "email",
        "is_inbound": True,
        "created_at": emitted_at,
        "subject": subject,
        "blurb": text[:100],
        "body": f"<p>{text}</p>",
        "text": text,
        "author": None,
        "recipients": [
            {"_links": {"related": {"contact": None}}, "name": sender_name, "handle": sender,
             "role": "from"},
            {"_links": {"related": {"contact": None}}, "name": "Support", "handle": to,
             "role": "to"},
        ],
        "attachments": [],
        "metadata": {},
    }
    return {
        "_links": {"self": f"{base_url}/events/{event_id}"},
        "id": event_id,
        "type": "inbound",
        "emitted_at": emitted_at,
        "source": {"_meta": {"type": "inboxes"},
                   "data": [{"id": inbox_id, "name": "Support", "is_private": False}]},
        "target": {"_meta": {"type": "message"}, "data": msg},
        "conversation": {
            "_links": {"self": f"{base_url}/conversations/{conversation_id}"},
            "id": conversation_id, "type": "conversation", "subject": subject,
            "status": "unassigned", "assignee": None, "tags": [], "links": [],
            "recipient": {"handle": sender, "role": "from", "name": sender_name},
            "custom_fields": {}, "is_private": False, "scheduled_reminders": [],
            "metadata": {}, "created_at": emitted_at,
        },
    }
