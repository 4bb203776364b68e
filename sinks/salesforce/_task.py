"""UpsertTask commands as Salesforce Task records, and the start-up check of the external id
field every upsert is keyed on."""

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

# Createable but not updateable: an upsert that hits an existing Task must leave them out.
INSERT_ONLY_TASK_FIELDS = frozenset({"TaskSubtype"})


def task_record(op: dict[str, Any], for_update: bool = False) -> dict[str, Any]:
    rec: dict[str, Any] = {"attributes": {"type": "Task"}, op["external_id_field"]: op["external_id"]}
    for key, field in _TASK_FIELDS.items():
        if for_update and field in INSERT_ONLY_TASK_FIELDS:
            continue
        if op.get(key) is not None:  # never blank a field someone else filled in
            rec[field] = op[key]
    activity = op["activity_date"]
    rec["ActivityDate"] = activity.isoformat() if isinstance(activity, date) else str(activity)
    return rec


def insert_only_refused(errors: list[dict[str, Any]]) -> bool:
    """The upsert found an existing Task and refused only the create-only fields."""
    return bool(errors) and all(
        e.get("statusCode") == "INVALID_FIELD_FOR_INSERT_UPDATE"
        and set(e.get("fields") or []) <= INSERT_ONLY_TASK_FIELDS
        for e in errors
    )


def check_external_id_field(describe: dict[str, Any], field: str) -> None:
    """``FatalError`` naming ``field`` unless Task's describe shows it as a unique external id:
    upserts keyed on anything else fail for every record (or, without Unique, may insert
    the same Task twice when two writers race)."""
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
                         f"{' and '.join(missing)}; the sink upserts Tasks on it")
