"""Use-case rules: from a matched Front event to commands."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, date, datetime
from typing import Any

_SUBTYPES = {"email": "Email", "call": "Call", "phone-call": "Call"}


def _command_id(*parts: str) -> str:
    # Deterministic: reprocessing the same event yields the same command id, so audit
    # records of a replay line up with the original.
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def task_command(event: dict[str, Any], match: dict[str, Any], external_id_field: str) -> dict[str, Any]:
    message = event["message"]
    created: datetime = message["created_at"]
    if not isinstance(created, datetime):
        created = datetime.fromtimestamp(int(created) / 1000, UTC)
    direction = "Inbound" if message["is_inbound"] else "Outbound"
    channel = message["channel_type"]
    subject = message.get("subject") or event.get("conversation_subject") or "(no subject)"
    activity: date = created.astimezone(UTC).date()
    return {
        "command_id": _command_id("UpsertTask", message["id"]),
        "idempotency_key": f"Task/{external_id_field}/{message['id']}",
        "created_at": int(time.time() * 1000),
        "origin": {
            "system": "frontforce",
            "source_event_id": event["event_id"],
            "correlation_id": event["event_id"],
        },
        "operation": ("frontforce.commands.UpsertTask", {
            "external_id_field": external_id_field,
            "external_id": message["id"],
            "who_id": match["id"],
            "what_id": match.get("account_id"),
            "owner_id": None,
            "subject": f"{direction} {channel}: {subject}"[:255],
            "description": (message.get("text") or "")[:32000] or None,
            "activity_date": activity,
            "status": "Completed",
            "task_subtype": _SUBTYPES.get(channel, "Task"),
            "front_conversation_id": event.get("conversation_id"),
        }),
    }
