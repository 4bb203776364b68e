"""UpsertTask commands as Salesforce Task records, created once and never rewritten, and the
start-up check of the unique external id field that makes the create idempotent."""

from __future__ import annotations

from datetime import date
from typing import Any

from frontforce.errors import FatalError

_TASK_FIELDS = {
    "who_id": "WhoId",
    "what_id": "WhatId",
    "owner_id": "OwnerId",
    "subject": "Subject",
    "description": "Description",
    "status": "Status",
    "task_subtype": "TaskSubtype",
    "front_conversation_id": "Front_Conversation_Id__c",
}


def task_record(op: dict[str, Any]) -> dict[str, Any]:
    """The Task to create (never to update: a logged message is a fact)."""
    rec: dict[str, Any] = {"attributes": {"type": "Task"}, op["external_id_field"]: op["external_id"]}
    for key, field in _TASK_FIELDS.items():
        # Left out when empty: a Subject privacy.exclude_fields keeps out arrives as "".
        if op.get(key) not in (None, ""):
            rec[field] = op[key]
    # A parent known only by its external id: Salesforce resolves it inside this create
    # (relationship name + the external id; "attributes" names the type of a polymorphic
    # field). An id, when the command has one, wins.
    for relationship, (sobject, field, value) in parent_refs(op).items():
        rec[relationship] = {"attributes": {"type": sobject}, field: value}
    for name, value in (op.get("fields") or {}).items():  # worker.task_fields_from_front
        if value not in (None, ""):
            rec[name] = value
    activity = op["activity_date"]
    rec["ActivityDate"] = activity.isoformat() if isinstance(activity, date) else str(activity)
    return rec


def parent_refs(op: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """The Task's parents named by external id and not by Id, by relationship ("Who",
    "What"): (sObject, external id field, value)."""
    out: dict[str, tuple[str, str, str]] = {}
    for ref_key, id_key, relationship in (("who_ref", "who_id", "Who"), ("what_ref", "what_id", "What")):
        ref = op.get(ref_key)
        if isinstance(ref, tuple):  # read with return_record_name: (record name, fields)
            ref = ref[1]
        if ref and op.get(id_key) is None:
            out[relationship] = (str(ref["sobject"]), str(ref["field"]), str(ref["value"]))
    return out


def check_external_id_field(describe: dict[str, Any], field: str) -> None:
    """``FatalError`` naming ``field`` unless Task's describe shows it as a unique external id:
    creates keyed on anything else would not be idempotent: without Unique, a re-delivered
    command would insert the same Task twice instead of answering DUPLICATE_VALUE."""
    fields = {str(f.get("name", "")).lower(): f for f in describe.get("fields") or []
              if isinstance(f, dict)}
    found = fields.get(field.lower())
    if found is None:
        raise FatalError(f"salesforce.task_external_id_field {field!r} does not exist on Task "
                         "(or the integration user cannot see it)")
    missing = [label for flag, label in (("externalId", "External ID"), ("unique", "Unique"))
               if not found.get(flag)]
    if missing:
        raise FatalError(f"salesforce.task_external_id_field {field!r} on Task is not marked "
                         f"{' and '.join(missing)}; the sink relies on its uniqueness to create each Task once")
