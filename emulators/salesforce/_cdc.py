"""Change Data Capture core: turning committed writes into change events (fact sheet §7).

Capture. ``_writes`` reports every committed row change (``Change``: before/after images) to
``OrgState.capture``; the changes of one transaction are turned into events when it commits
(``ChangeLog.commit``). Rolled-back work never produces events. A transaction is one REST
request (a collections call, an allOrNone composite, a lead conversion, an admin seed), except
that composite (allOrNone=false) and composite/batch subrequests commit one by one.

Event shape = the Pub/Sub API payload after Avro decoding (§7.3):
- ``ChangeEventHeader`` with entityName, recordIds, changeType, changeOrigin, transactionKey,
  sequenceNumber, commitTimestamp (epoch ms), commitNumber, commitUser, nulledFields,
  diffFields, changedFields (kept as field names; the Pub/Sub server, ``_pubsub``, sends
  them as bitmaps, ``to_bitmaps``, in the Avro-encoded payload).
- every field of the entity's event schema, in schema order: all values on CREATE/UNDELETE,
  nulls on DELETE, on UPDATE only changed fields non-null (a null means "unchanged" unless the
  field is in nulledFields). IsDeleted, SystemModstamp and Id are not part of the schema.
- the compound ``Name`` of Contact/Lead/User is nested (``{"FirstName", "LastName"}``) and its
  changed parts are reported as ``Name.FirstName``.
- datetimes are epoch milliseconds, dates are days since 1970-01-01 (Avro ``long``/``int``).
- long text (textarea) values of >= 1,000 characters may be sent as a unified diff
  (``--- \\n+++ <sha256 hex of the new value>\\n@@ ...``) and are then listed in diffFields,
  following Salesforce's documented rules (change <= 50 % of the length, <= 25 % of the lines,
  diff shorter than the value).
- Merged events: changes of one transaction that carry the *same* change (same type, same body,
  same header lists — e.g. one field set to one value on several records, or deletes) become one
  event whose recordIds lists all records, as Salesforce does "within one second".

Replay ids are integers increasing by one per event; on the wire they are 8 bytes, big-endian
(opaque to clients, as Salesforce's are). Events are kept ``cdc_retention_hours`` (default 72) of org time.
"""

from __future__ import annotations

import base64
import datetime as dt
import difflib
import hashlib
import json
import uuid
from bisect import bisect_right
from dataclasses import dataclass
from functools import cache
from typing import Any

from emulators.salesforce._schema import SCHEMA, FieldDef
from emulators.salesforce._timefmt import parse_datetime

__all__ = [
    "ALL_CHANNEL",
    "CDC_ENTITIES",
    "CHANGE_TYPES",
    "DEFAULT_DELIVERY_LIMIT",
    "DEFAULT_ENTITY_LIMIT",
    "DEFAULT_RETENTION_HOURS",
    "Change",
    "ChangeLog",
    "ReplayError",
    "avro_schema",
    "channel_for",
    "entity_for_channel",
    "schema_id",
    "to_bitmaps",
]

# Objects whose changes are captured (fact sheet §7.1 plus Task).
CDC_ENTITIES = ("Account", "Contact", "Lead", "Opportunity", "Case", "User", "Task")
ALL_CHANNEL = "/data/ChangeEvents"
CHANGE_TYPES = ("CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE",
                "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW")
DEFAULT_RETENTION_HOURS = 72.0
DEFAULT_DELIVERY_LIMIT = 25_000  # Enterprise Edition, per rolling 24 h (fact sheet §7.2)
DEFAULT_ENTITY_LIMIT = 5  # default CDC entity selection ceiling (fact sheet §0.6)

_EXCLUDED = frozenset({"Id", "IsDeleted", "SystemModstamp"})
_AUDIT = ("CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById")
_COMPOUND_NAME = frozenset({"Contact", "Lead", "User"})
_NAME_PARTS = ("FirstName", "LastName")
_DIFF_MIN_LENGTH = 1000
_FIRST_COMMIT_NUMBER = 11_000_000_000_000  # an SCN-looking number; only ever increases
_EPOCH_DAY = dt.date(1970, 1, 1)
_NAMESPACE = "com.sforce.eventbus"
_DOUBLE_TYPES = frozenset({"double", "currency", "percent"})


class ReplayError(Exception):
    """The requested replay id is not (or no longer) in the event stream."""


@dataclass(frozen=True)
class Change:
    """One committed row change, as reported by the write path."""

    entity: str
    record_id: str
    change_type: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    user_id: str
    origin: str


def channel_for(entity: str) -> str:
    return f"/data/{entity}ChangeEvent"


def entity_for_channel(channel: str) -> str | None:
    """``/data/ContactChangeEvent`` -> ``Contact`` (None if not a supported entity channel)."""
    prefix, suffix = "/data/", "ChangeEvent"
    if not (channel.startswith(prefix) and channel.endswith(suffix)):
        return None
    name = channel[len(prefix):-len(suffix)]
    return next((e for e in CDC_ENTITIES if e.lower() == name.lower()), None)


# ------------------------------------------------------------------ event schema
@dataclass(frozen=True)
class _Field:
    name: str
    fd: FieldDef | None  # None: compound parent whose parts are ``children``
    children: tuple[FieldDef, ...] = ()


@cache
def _layout(entity: str) -> tuple[_Field, ...]:
    """Top-level fields of the entity's change event, in schema order (header excluded)."""
    sobj = SCHEMA[entity]
    compound = entity in _COMPOUND_NAME
    business: list[_Field] = []
    audit: list[_Field] = []
    for fd in sobj.fields:
        if fd.name in _EXCLUDED or (compound and fd.name in _NAME_PARTS):
            continue
        if compound and fd.name == "Name":
            parts = tuple(p for p in (sobj.field(n) for n in _NAME_PARTS) if p is not None)
            business.append(_Field("Name", None, parts))
        elif fd.name in _AUDIT:
            audit.append(_Field(fd.name, fd))
        else:
            business.append(_Field(fd.name, fd))
    # Salesforce's schemas list the audit fields after the object's own fields.
    audit.sort(key=lambda f: _AUDIT.index(f.name))
    return tuple(business + audit)


def _avro_type(fd: FieldDef) -> str:
    if fd.type == "boolean":
        return "boolean"
    if fd.type in _DOUBLE_TYPES:
        return "double"
    if fd.type == "int":
        return "int"
    if fd.type == "datetime":
        return "long"  # epoch milliseconds
    if fd.type == "date":
        return "int"  # days since 1970-01-01
    return "string"


def _nullable(type_: Any) -> dict[str, Any]:
    return {"type": ["null", type_], "default": None}


@cache
def _schema_json(entity: str) -> str:
    header = {
        "type": "record", "name": "ChangeEventHeader", "namespace": _NAMESPACE,
        "fields": [
            {"name": "entityName", "type": "string"},
            {"name": "recordIds", "type": {"type": "array", "items": "string"}},
            {"name": "changeType", "type": {"type": "enum", "name": "ChangeType",
                                            "namespace": _NAMESPACE,
                                            "symbols": list(CHANGE_TYPES)}},
            {"name": "changeOrigin", "type": "string"},
            {"name": "transactionKey", "type": "string"},
            {"name": "sequenceNumber", "type": "int"},
            {"name": "commitTimestamp", "type": "long"},
            {"name": "commitNumber", "type": "long"},
            {"name": "commitUser", "type": "string"},
            {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
            {"name": "diffFields", "type": {"type": "array", "items": "string"}},
            {"name": "changedFields", "type": {"type": "array", "items": "string"}},
        ],
    }
    fields: list[dict[str, Any]] = [{"name": "ChangeEventHeader", "type": header}]
    for f in _layout(entity):
        if f.fd is None:
            record = {"type": "record", "name": "Switchable_PersonName", "namespace": _NAMESPACE,
                      "fields": [{"name": c.name, **_nullable(_avro_type(c))}
                                 for c in f.children]}
            fields.append({"name": f.name, **_nullable(record)})
        else:
            fields.append({"name": f.name, **_nullable(_avro_type(f.fd))})
    schema = {"type": "record", "name": f"{entity}ChangeEvent", "namespace": _NAMESPACE,
              "fields": fields}
    return json.dumps(schema)


def avro_schema(entity: str) -> dict[str, Any]:
    """The Avro schema of ``{entity}ChangeEvent`` (what Pub/Sub's GetSchema returns)."""
    result: dict[str, Any] = json.loads(_schema_json(entity))
    return result


@cache
def schema_id(entity: str) -> str:
    digest = hashlib.sha256(_schema_json(entity).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:22]


def _hex(bits: int) -> str:
    """``0x`` + whole bytes, big-endian, upper case (as Salesforce sends them: Salesforce's
    Java decoder reads the digits in pairs)."""
    digits = f"{bits:X}"
    return "0x" + ("0" * (len(digits) % 2)) + digits


def to_bitmaps(entity: str, names: list[str]) -> list[str]:
    """Field names -> Pub/Sub bitmap strings (Pub/Sub "Event Deserialization
    Considerations"): first ``0x…`` over the top-level schema positions of the
    non-compound fields (position 0 is ChangeEventHeader), then ``{pos}-0x…`` over the
    children of each compound field at ``pos``. A compound parent's own bit stays clear;
    when only nested fields are listed the top-level element is left out."""
    if not names:
        return []
    layout = _layout(entity)
    positions = {f.name: i + 1 for i, f in enumerate(layout)}
    top = 0
    nested: dict[int, int] = {}
    for name in names:
        parent, _, child = name.partition(".")
        pos = positions[parent]
        if child:
            children = [c.name for c in layout[pos - 1].children]
            nested[pos] = nested.get(pos, 0) | 1 << children.index(child)
        else:
            top |= 1 << pos
    head = [_hex(top)] if top else []
    return head + [f"{pos}-{_hex(bits)}" for pos, bits in sorted(nested.items())]


# ------------------------------------------------------------------ event bodies
def _value(fd: FieldDef, value: Any) -> Any:
    """Wire (REST) value -> Avro-decoded value."""
    if value is None:
        return None
    if fd.type == "datetime":
        return int(parse_datetime(value).timestamp() * 1000)
    if fd.type == "date":
        return (dt.date.fromisoformat(value) - _EPOCH_DAY).days
    if fd.type in _DOUBLE_TYPES:
        return float(value)
    if fd.type == "int":
        return int(value)
    return value


def _text_diff(fd: FieldDef, old: Any, new: Any) -> str | None:
    """Unified diff for a large text update, or None when the full value must be sent."""
    if fd.type != "textarea" or not isinstance(old, str) or not isinstance(new, str):
        return None
    if len(new) < _DIFF_MIN_LENGTH or abs(len(new) - len(old)) > 0.5 * len(old):
        return None
    old_lines, new_lines = old.split("\n"), new.split("\n")
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    touched = sum((i2 - i1) + (j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes()
                  if tag != "equal")
    if touched > 0.25 * (len(old_lines) + len(new_lines)):
        return None
    hunks = list(difflib.unified_diff(old_lines, new_lines, lineterm="", n=0))[2:]
    digest = hashlib.sha256(new.encode("utf-8")).hexdigest()
    value = f"--- \n+++ {digest}\n" + "\n".join(hunks)
    return value if len(value) < len(new) else None


def _fields_key(fields: dict[str, Any]) -> Any:
    """What tells two changes' field values apart, for grouping them into one event: the
    sorted items when every value is hashable (a write's fields nearly always are), else
    their JSON (a compound field's dict)."""
    items = tuple(sorted(fields.items()))
    try:
        hash(items)
    except TypeError:
        return json.dumps(fields, sort_keys=True)
    return items


def _body(change: Change) -> tuple[dict[str, Any], list[str], list[str], list[str]]:
    """(record fields, changedFields, nulledFields, diffFields) for one change."""
    kind = change.change_type
    before, after = change.before or {}, change.after or {}
    full = kind in ("CREATE", "UNDELETE")
    fields: dict[str, Any] = {}
    changed: list[str] = []
    nulled: list[str] = []
    diffs: list[str] = []
    for f in _layout(change.entity):
        if f.fd is None:
            if full:
                fields[f.name] = {c.name: _value(c, after.get(c.name)) for c in f.children}
            elif kind == "UPDATE":
                parts: dict[str, Any] = {}
                for c in f.children:
                    parts[c.name] = None
                    if before.get(c.name) != after.get(c.name):
                        parts[c.name] = _value(c, after.get(c.name))
                        changed.append(f"{f.name}.{c.name}")
                        if after.get(c.name) is None:
                            nulled.append(f"{f.name}.{c.name}")
                touched = any(before.get(c.name) != after.get(c.name) for c in f.children)
                fields[f.name] = parts if touched else None
            else:
                fields[f.name] = None
            continue
        name = f.name
        if full:
            fields[name] = _value(f.fd, after.get(name))
        elif kind == "UPDATE" and before.get(name) != after.get(name):
            changed.append(name)
            new = after.get(name)
            diff = _text_diff(f.fd, before.get(name), new)
            if new is None:
                nulled.append(name)
                fields[name] = None
            elif diff is not None:
                diffs.append(name)
                fields[name] = diff
            else:
                fields[name] = _value(f.fd, new)
        else:
            fields[name] = None
    return fields, changed, nulled, diffs


# ------------------------------------------------------------------ the event stream
class ChangeLog:
    """Retained change events, replay positions, per-subscriber delivery usage, selection."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.last_replay_id = 0
        # Every event with replayId <= purged_through is gone (retention or reset).
        self.purged_through = 0
        self.commit_number = _FIRST_COMMIT_NUMBER
        # Entities selected through per-entity channels (org-wide, first come first served).
        self.selected: list[str] = []
        # client id -> {epoch minute: delivered events}
        self.delivered: dict[str, dict[int, int]] = {}

    def clear(self) -> None:
        """Admin reset: drop events and usage; replay ids keep increasing (none is reused)."""
        self.events = []
        self.purged_through = self.last_replay_id
        self.selected = []
        self.delivered = {}

    # -------------------------------------------------------------- writing
    def commit(self, changes: list[Change], commit_ms: int) -> None:
        """Append the events of one committed transaction."""
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for change in changes:
            fields, changed, nulled, diffs = _body(change)
            key = (change.entity, change.change_type, change.user_id, change.origin,
                   _fields_key(fields), tuple(changed), tuple(nulled),
                   tuple(diffs))
            group = groups.get(key)
            if group is None:
                groups[key] = {"change": change, "ids": [change.record_id], "fields": fields,
                               "changed": changed, "nulled": nulled, "diffs": diffs}
            elif change.record_id not in group["ids"]:
                group["ids"].append(change.record_id)
        if not groups:
            return
        self.commit_number += 1
        transaction_key = str(uuid.uuid4())
        for sequence, group in enumerate(groups.values(), start=1):
            change = group["change"]
            header = {
                "entityName": change.entity,
                "recordIds": group["ids"],
                "changeType": change.change_type,
                "changeOrigin": change.origin,
                "transactionKey": transaction_key,
                "sequenceNumber": sequence,
                "commitTimestamp": commit_ms,
                "commitNumber": self.commit_number,
                "commitUser": change.user_id,
                "nulledFields": group["nulled"],
                "diffFields": group["diffs"],
                "changedFields": group["changed"],
            }
            self._append(change.entity, {"ChangeEventHeader": header, **group["fields"]})

    def gap(self, entity: str, change_type: str, record_ids: list[str], user_id: str,
            commit_ms: int) -> int:
        """Append a gap/overflow event (header only, every field null)."""
        self.commit_number += 1
        header = {"entityName": entity, "recordIds": list(record_ids), "changeType": change_type,
                  "changeOrigin": "", "transactionKey": str(uuid.uuid4()), "sequenceNumber": 1,
                  "commitTimestamp": commit_ms, "commitNumber": self.commit_number,
                  "commitUser": user_id, "nulledFields": [], "diffFields": [],
                  "changedFields": []}
        fields = {f.name: None for f in _layout(entity)}
        return self._append(entity, {"ChangeEventHeader": header, **fields})

    def _append(self, entity: str, payload: dict[str, Any]) -> int:
        self.last_replay_id += 1
        self.events.append({"replayId": self.last_replay_id, "entity": entity,
                            "id": str(uuid.uuid4()), "payload": payload})
        return self.last_replay_id

    def purge(self, now_ms: int, retention_ms: int) -> None:
        cutoff = now_ms - retention_ms
        count = 0
        for event in self.events:
            if event["payload"]["ChangeEventHeader"]["commitTimestamp"] >= cutoff:
                break
            count += 1
        if count:
            self.purged_through = self.events[count - 1]["replayId"]
            del self.events[:count]

    # -------------------------------------------------------------- reading
    @property
    def earliest_replay_id(self) -> int:
        """The position EARLIEST (-2) resolves to: just before the oldest retained event."""
        return self.purged_through

    def position(self, replay_id: int) -> int:
        """Resolve -1 (LATEST: the tip) / -2 (EARLIEST) / a stored id; raise ReplayError."""
        if replay_id == -1:
            return self.last_replay_id
        if replay_id == -2:
            return self.purged_through
        if replay_id < self.purged_through or replay_id > self.last_replay_id:
            raise ReplayError(replay_id)
        return replay_id

    def read(self, entities: frozenset[str] | None, after: int, limit: int
             ) -> tuple[list[dict[str, Any]], int, bool]:
        """Events with replayId > ``after`` on ``entities`` (None = all), at most ``limit``.

        Returns (events, latest_replay_id, has_more). latest_replay_id is the position to
        resume from: the last delivered event when cut short, else the tip.
        """
        start = bisect_right(self.events, after, key=lambda e: e["replayId"])
        out: list[dict[str, Any]] = []
        for event in self.events[start:]:
            if entities is not None and event["entity"] not in entities:
                continue
            if len(out) >= limit:
                return out, out[-1]["replayId"] if out else after, True
            out.append(event)
        return out, self.last_replay_id, False

    # -------------------------------------------------------------- delivery allocation
    def delivered_since(self, client_id: str, floor_minute: int) -> int:
        buckets = self.delivered.get(client_id, {})
        for minute in [m for m in buckets if m <= floor_minute]:
            del buckets[minute]
        return sum(buckets.values())

    def count_delivery(self, client_id: str, minute: int, n: int) -> None:
        if n:
            buckets = self.delivered.setdefault(client_id, {})
            buckets[minute] = buckets.get(minute, 0) + n

    # -------------------------------------------------------------- persistence
    def to_json(self) -> dict[str, Any]:
        return {"events": self.events, "last_replay_id": self.last_replay_id,
                "purged_through": self.purged_through, "commit_number": self.commit_number,
                "selected": self.selected,
                "delivered": {c: {str(m): n for m, n in b.items()}
                              for c, b in self.delivered.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChangeLog:
        log = cls()
        log.events = list(data.get("events", []))
        log.last_replay_id = int(data.get("last_replay_id", 0))
        log.purged_through = int(data.get("purged_through", 0))
        log.commit_number = int(data.get("commit_number", _FIRST_COMMIT_NUMBER))
        log.selected = list(data.get("selected", []))
        log.delivered = {c: {int(m): int(n) for m, n in b.items()}
                         for c, b in data.get("delivered", {}).items()}
        return log
