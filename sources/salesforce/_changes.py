"""``salesforce.changes`` records from the two things Salesforce gives us: a decoded change
event (Pub/Sub) and a SOQL row (initial load, re-reads).

Change events follow fact sheet §7.3: one event may name several records (fanned out here,
one record each, since Kafka is keyed by record id); an UPDATE carries every field with
the unchanged ones null (a null is "cleared" only when the field is in ``nulled_fields``);
a DELETE carries no values; gap events carry no values and stand for a re-read (see
``_source``). Field names in the lists are Salesforce's, compound children as
``Name.FirstName``.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sources.salesforce._fields import convert, spec_for

__all__ = ["from_event", "from_row", "gone", "overflow_id", "position_of"]

_DIRECT = {"CREATE", "UPDATE", "DELETE", "UNDELETE"}
_FULL = {"CREATE", "UNDELETE"}


def position_of(replay_id: bytes) -> str:
    """A replay id as the cursor and ``source_position`` store it (opaque bytes, base64)."""
    return base64.b64encode(replay_id).decode()


def overflow_id(sobject: str) -> str:
    """The ``record_id`` of a GAP_OVERFLOW, which names no record: the object's key prefix
    and ``*``, the wildcard form Salesforce itself uses in ``recordIds``."""
    return f"{spec_for(sobject).key_prefix or sobject}*"


def _flatten(body: dict[str, Any]) -> dict[str, Any]:
    """Compound fields (``Name: {FirstName, LastName}``) under their children's names, which
    are the real field names (``FirstName``), as SOQL returns them."""
    flat: dict[str, Any] = {}
    for key, value in body.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat.setdefault(key, value)
    return flat


def _ms(stamp: str | None) -> int:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000) if stamp else 0


def from_event(header: dict[str, Any], body: dict[str, Any], replay_id: bytes,
               custom: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One change record per record id of a decoded event (header lists already expanded)."""
    kind = str(header["changeType"])
    sobject = str(header["entityName"])
    spec = spec_for(sobject)
    flat = _flatten(body)
    changed = list(header.get("changedFields") or [])
    base: dict[str, Any] = {
        "sobject": sobject,
        "change_type": kind if kind in _DIRECT else "GAP",
        "cdc_change_type": kind,
        "commit_timestamp": int(header["commitTimestamp"]),
        "commit_user": header.get("commitUser") or None,
        "changed_fields": changed,
        "nulled_fields": list(header.get("nulledFields") or []),
        "diff_fields": list(header.get("diffFields") or []),
        "change_origin": header.get("changeOrigin") or None,
        "transaction_key": header.get("transactionKey") or None,
        "sequence_number": header.get("sequenceNumber"),
        "source_position": position_of(replay_id),
        "custom_fields": {},
    }
    if kind in _DIRECT and kind != "DELETE":
        for sf_field, field, type_ in spec.fields:
            base[field] = convert(type_, flat.get(sf_field))
        wanted = custom.get(sobject, [])
        touched = set(changed) | {name.rpartition(".")[2] for name in changed}
        base["custom_fields"] = {
            name: None if flat.get(name) is None else str(flat[name])
            for name in wanted if name in flat and (kind in _FULL or name in touched)}
    ids = [str(i) for i in header.get("recordIds") or []]
    if not ids:  # GAP_OVERFLOW: no record ids, the whole object is affected
        ids = [overflow_id(sobject)]
    return [{"record_id": record_id, **base} for record_id in ids]


def from_row(sobject: str, row: dict[str, Any], custom: dict[str, list[str]]) -> dict[str, Any]:
    """A SOQL row as the record's full current state (SNAPSHOT), or a DELETE for a row in
    the recycle bin (queryAll)."""
    spec = spec_for(sobject)
    deleted = bool(row.get("IsDeleted"))
    record: dict[str, Any] = {
        "record_id": row["Id"],
        "sobject": sobject,
        "change_type": "DELETE" if deleted else "SNAPSHOT",
        "commit_timestamp": _ms(row.get("SystemModstamp")),
        "commit_user": row.get("LastModifiedById"),
        "changed_fields": [],
        "custom_fields": {},
    }
    if not deleted:
        for sf_field, field, type_ in spec.fields:
            record[field] = convert(type_, row.get(sf_field))
        record["custom_fields"] = {name: None if row.get(name) is None else str(row[name])
                                   for name in custom.get(sobject, [])}
    return record


def gone(sobject: str, record_id: str, commit_ms: int) -> dict[str, Any]:
    """A record a re-read no longer finds at all (hard-deleted or purged): a DELETE."""
    return {"record_id": record_id, "sobject": sobject, "change_type": "DELETE",
            "commit_timestamp": commit_ms, "commit_user": None, "changed_fields": [],
            "custom_fields": {}}
