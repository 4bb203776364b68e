"""Use-case rules: from a matched Front event to commands."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from streams._matching import FREE_MAIL

_SUBTYPES = {"email": "Email", "call": "Call", "phone-call": "Call"}
_EPOCH = date(1970, 1, 1)


def _days(d: date) -> int:
    """A date as Avro's ``date`` stores it (days since the epoch): what fastavro writes for a
    ``date``, and what the compiled encoder takes (it has no logical types: given a ``date``,
    it leaves the command to fastavro, at twice the cost)."""
    return (d - _EPOCH).days


def _command_id(*parts: str) -> str:
    # Deterministic: reprocessing the same event yields the same command id, so audit
    # records of a replay line up with the original.
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def task_command(event: dict[str, Any], match: dict[str, Any], external_id_field: str,
                 owner_id: str | None = None, external_id: str | None = None) -> dict[str, Any]:
    """The message's Task on ``match``: a Contact or Lead (Who, with its Account as What) or
    an Account matched by domain (What only). ``owner_id``: the Salesforce User of the Front
    teammate (use case 1), None leaves it to Salesforce. ``external_id``: the message id, or
    ``<message id>/<handle>`` for a further participant's Task (``worker.all_participants``)."""
    message = event["message"]
    ext = external_id or message["id"]
    is_account = match.get("kind") == "Account"
    created: datetime = message["created_at"]
    if not isinstance(created, datetime):
        created = datetime.fromtimestamp(int(created) / 1000, UTC)
    direction = "Inbound" if message["is_inbound"] else "Outbound"
    channel = message["channel_type"]
    subject = message.get("subject") or event.get("conversation_subject") or "(no subject)"
    activity: date = created.astimezone(UTC).date()
    return {
        "command_id": _command_id("UpsertTask", ext),
        "idempotency_key": f"Task/{external_id_field}/{ext}",
        "created_at": int(time.time() * 1000),
        "origin": {
            "system": "frontforce",
            "source_event_id": event["event_id"],
            "correlation_id": event["event_id"],
        },
        "operation": ("frontforce.commands.UpsertTask", {
            "external_id_field": external_id_field,
            "external_id": ext,
            "who_id": None if is_account else match["id"],
            "what_id": match["id"] if is_account else match.get("account_id"),
            "owner_id": owner_id,
            "subject": f"{direction} {channel}: {subject}"[:255],
            "description": (message.get("text") or "")[:32000] or None,
            "activity_date": _days(activity),
            "status": "Completed",
            "task_subtype": _SUBTYPES.get(channel, "Task"),
            "front_conversation_id": event.get("conversation_id"),
        }),
    }


LEAD_EXTERNAL_ID = "Front_Handle__c"
NEW_LEAD_TAG = "New Lead"


def _origin(event: dict[str, Any]) -> dict[str, str]:
    return {"system": "frontforce", "source_event_id": event["event_id"],
            "correlation_id": event["event_id"]}


def lead_command(event: dict[str, Any], email: str, name: str | None,
                 free_mail: frozenset[str] = FREE_MAIL) -> dict[str, Any]:
    """The Lead of an unknown sender, created once on its handle (``Front_Handle__c``): the
    command id and idempotency key depend on the handle only, so every message of that
    sender, and every replay, asks for the same Lead."""
    local, _, domain = email.partition("@")
    first, _, last = (name or "").strip().rpartition(" ")
    if not last:
        first, last = "", local
    company = "[not provided]" if domain in free_mail else domain
    return {
        "command_id": _command_id("UpsertLead", email),
        "idempotency_key": f"Lead/{LEAD_EXTERNAL_ID}/{email}",
        "created_at": int(time.time() * 1000),
        "origin": _origin(event),
        "operation": ("frontforce.commands.UpsertLead", {
            "external_id_field": LEAD_EXTERNAL_ID, "external_id": email,
            "first_name": first or None, "last_name": last[:80], "company": company[:255],
            "email": email, "phone": None, "lead_source": "Other", "owner_id": None,
        }),
    }


def lead_task_command(event: dict[str, Any], email: str, external_id_field: str,
                      owner_id: str | None = None) -> dict[str, Any]:
    """The message's Task on the Lead ``lead_command`` makes, named by its external id: no
    lookup of the Lead's Id anywhere."""
    cmd = task_command(event, {"id": None, "account_id": None}, external_id_field, owner_id)
    cmd["operation"][1]["who_ref"] = {"sobject": "Lead", "field": LEAD_EXTERNAL_ID, "value": email}
    return cmd


def new_lead_tag_command(event: dict[str, Any]) -> dict[str, Any]:
    """Tag the conversation ``New Lead`` in Front, once per conversation."""
    conversation = event["conversation_id"]
    return {
        "command_id": _command_id("AddTags", conversation, NEW_LEAD_TAG),
        "idempotency_key": f"AddTags/{conversation}/{NEW_LEAD_TAG}",
        "created_at": int(time.time() * 1000),
        "origin": _origin(event),
        "operation": ("frontforce.commands.front.AddTags", {
            "conversation_id": conversation, "tag_names": [NEW_LEAD_TAG]}),
    }


CASE_LINK_FIELD = "Front_Conversation_Id__c"


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value or 0)


def case_status_command(event: dict[str, Any], status: str, closing: bool) -> dict[str, Any]:
    """Use case 6: the Case linked to the conversation closed (archived, with a resolution
    note) or reopened. Keyed per event: a later archive after a reopen is a new fact."""
    conversation = event["conversation_id"]
    who = event.get("actor_email") or "a teammate"
    at = datetime.fromtimestamp(_ms(event["occurred_at"]) / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
    subject = event.get("conversation_subject") or conversation
    note = (f"Resolved in Front: conversation \"{subject}\" archived by {who} at {at}."
            if closing else None)
    return {
        "command_id": _command_id("CloseCase", conversation, event["event_id"]),
        "idempotency_key": f"CloseCase/{conversation}/{event['event_id']}",
        "created_at": int(time.time() * 1000),
        "origin": _origin(event),
        "operation": ("frontforce.commands.CloseCase", {
            "case_id": None, "front_conversation_id": conversation, "status": status,
            "resolution_note": note}),
    }


def case_comment_command(change: dict[str, Any], conversation_id: str) -> dict[str, Any]:
    """Use case 7: a Case status change made in Salesforce, as an internal comment on the
    linked Front conversation. Keyed by the change (record, commit time, status), so a
    re-read of the same change asks for the same comment and the Front sink's ledger
    posts it once."""
    status = change.get("status") or "(none)"
    subject = change.get("subject")
    key = f"{change['record_id']}/{_ms(change['commit_timestamp'])}/{status}"
    body = (f"Salesforce Case {change['record_id']}"
            + (f" ({subject})" if subject else "") + f" is now {status}.")
    event_id = change.get("transaction_key") or key
    return {
        "command_id": _command_id("AddComment", key),
        "idempotency_key": f"AddComment/case-status/{key}",
        "created_at": int(time.time() * 1000),
        "origin": {"system": "frontforce", "source_event_id": str(event_id),
                   "correlation_id": str(event_id)},
        "operation": ("frontforce.commands.front.AddComment", {
            "conversation_id": conversation_id, "body": body, "author_email": None}),
    }


def tag_commands(event: dict[str, Any], match: dict[str, Any], rule: Any,
                 external_id_field: str) -> list[dict[str, Any]]:
    """Use case 4: what a tag on a conversation does on its person (``match``) in
    Salesforce, by the configured ``rule`` (frontforce.config.TagRule). Keyed by
    conversation and tag, not by event: the same tag again, on the same conversation, asks
    for the same Task and note, which the sink makes once."""
    conversation, tag = event["conversation_id"], str(event.get("tag_name") or "")
    key = f"{conversation}/{tag.lower()}"
    tagged = datetime.fromtimestamp(_ms(event["occurred_at"]) / 1000, UTC)
    out: list[dict[str, Any]] = []
    if rule.follow_up_task:
        out.append({
            "command_id": _command_id("UpsertTask", "tag", key),
            "idempotency_key": f"Task/{external_id_field}/tag:{key}",
            "created_at": int(time.time() * 1000),
            "origin": _origin(event),
            "operation": ("frontforce.commands.UpsertTask", {
                "external_id_field": external_id_field, "external_id": f"tag:{key}",
                "who_id": match["id"], "what_id": match.get("account_id"), "owner_id": None,
                "subject": rule.follow_up_task[:255],
                "description": f"Tagged {tag!r} in Front ({conversation}).",
                "activity_date": _days((tagged + timedelta(days=rule.follow_up_days)).date()),
                "status": "Not Started", "task_subtype": "Task",
                "front_conversation_id": conversation,
            }),
        })
    if rule.chatter_note:
        out.append({
            "command_id": _command_id("PostFeedItem", "tag", key),
            "idempotency_key": f"FeedItem/tag:{key}",
            "created_at": int(time.time() * 1000),
            "origin": _origin(event),
            "operation": ("frontforce.commands.PostFeedItem", {
                "parent_id": match.get("account_id") or match["id"],
                "body": f"{rule.chatter_note} (Front tag {tag!r} on {conversation})"[:10000],
            }),
        })
    return out


def assign_command(event: dict[str, Any], teammate_email: str) -> dict[str, Any]:
    """Use case 5: the conversation assigned to the Front teammate who owns its Account in
    Salesforce. Once per conversation (the Front sink's ledger): a teammate who reassigns it
    later is not overruled by the next message."""
    conversation = event["conversation_id"]
    return {
        "command_id": _command_id("AssignConversation", conversation, "account-owner"),
        "idempotency_key": f"AssignConversation/{conversation}/account-owner",
        "created_at": int(time.time() * 1000),
        "origin": _origin(event),
        "operation": ("frontforce.commands.front.AssignConversation", {
            "conversation_id": conversation, "teammate_email": teammate_email}),
    }


def handle_command(event_id: str, sobject: str, record_id: str, field: str,
                   value: str) -> dict[str, Any]:
    """Use case 2, a known person: a handle seen in Front added to their Contact or Lead, in
    a field that is blank (``only_if_blank``: a value someone put there meanwhile is kept).
    Keyed by record and handle: asked again, it is the same write."""
    return {
        "command_id": _command_id("UpdateRecord", record_id, "handle", value),
        "idempotency_key": f"UpdateRecord/{sobject}/{record_id}/handle/{value}",
        "created_at": int(time.time() * 1000),
        "origin": _origin({"event_id": event_id}),
        "operation": ("frontforce.commands.UpdateRecord", {
            "sobject": sobject, "record_id": record_id, "fields": {field: value},
            "only_if_blank": [field]}),
    }


def stage_command(event: dict[str, Any], opportunity_id: str, stage: str) -> dict[str, Any]:
    """Use case 4: a tag (or its removal) sets an Opportunity's stage. Keyed by the Front
    event: a replay asks for the same write; the next tag event is a new fact."""
    return {
        "command_id": _command_id("UpdateRecord", opportunity_id, event["event_id"]),
        "idempotency_key": f"UpdateRecord/Opportunity/{opportunity_id}/{event['event_id']}",
        "created_at": int(time.time() * 1000),
        "origin": _origin(event),
        "operation": ("frontforce.commands.UpdateRecord", {
            "sobject": "Opportunity", "record_id": opportunity_id,
            "fields": {"StageName": stage}, "only_if_blank": []}),
    }
