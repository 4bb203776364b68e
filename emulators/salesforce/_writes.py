"""DML semantics: validate, coerce, default, derive, and store records.

Every write path (single-record REST, collections, composite, admin seed) goes through
``create``/``update``/``upsert``/``delete`` here, so validation errors are identical whichever
resource the client used. Callers hold ``state.lock``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from emulators.salesforce._cdc import Change
from emulators.salesforce._duplicates import DUPLICATE_TYPES, duplicates_error, find_duplicates
from emulators.salesforce._errors import SfError, invalid_field, invalid_type, not_found
from emulators.salesforce._faults import LockFault
from emulators.salesforce._ids import canonical_id
from emulators.salesforce._schema import (
    CASE_CLOSED_STATUSES,
    NUMBER_TYPES,
    OPPORTUNITY_STAGES,
    SCHEMA,
    TASK_CLOSED_STATUSES,
    TEXT_TYPES,
    FieldDef,
    SObjectDef,
    get_sobject,
    type_of_id,
)
from emulators.salesforce._store import OrgState
from emulators.salesforce._timefmt import format_datetime, parse_date, parse_datetime

__all__ = [
    "Ctx",
    "check_lock",
    "create",
    "delete",
    "find_record",
    "record_url",
    "require_sobject",
    "undelete",
    "update",
    "upsert",
    "wire_record",
]

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_NAME_OBJECTS = frozenset({"Contact", "Lead", "User"})
_NO_FIELD = FieldDef("", "string")  # stand-in when a body key is not a field (relationships)
# System fields an admin seed may set (e.g. to backdate rows for watermark tests).
_ADMIN_SETTABLE = frozenset({"CreatedDate", "LastModifiedDate", "SystemModstamp",
                             "CreatedById", "LastModifiedById"})


@dataclass
class Ctx:
    """Who is calling and how: the authenticated user and the API version in the URL, plus
    request options that change write behaviour."""

    state: OrgState
    user_id: str
    version: str = "59.0"
    admin: bool = False
    # changeOrigin of change events: com/salesforce/api/{api}/{version}[;client={id}].
    api: str = "rest"
    call_client: str | None = None  # from ``Sforce-Call-Options: client=...``
    # Sforce-Duplicate-Rule-Header: allowSave / includeRecordDetails.
    allow_duplicates: bool = False
    include_record_details: bool = False
    # Injected UNABLE_TO_LOCK_ROW fault for this request (admin fault rules).
    lock_fault: LockFault | None = None
    # Records the duplicate rules ignore (the lead being converted).
    duplicate_exempt: frozenset[str] = field(default_factory=frozenset)

    def change_origin(self) -> str:
        """Empty for admin/automation writes, as for UI Classic and automation in Salesforce."""
        if self.admin or not self.api:
            return ""
        origin = f"com/salesforce/api/{self.api}/{self.version}"
        return f"{origin};client={self.call_client}" if self.call_client else origin


def require_sobject(name: str, *, status: int = 404) -> SObjectDef:
    """Resolve a type name; REST paths answer 404 NOT_FOUND, bodies/SOQL 400 INVALID_TYPE."""
    sobj = get_sobject(name) if isinstance(name, str) else None
    if sobj is None:
        if status == 404:
            raise not_found()
        raise invalid_type(str(name))
    return sobj


def record_url(ctx: Ctx, type_: str, record_id: str) -> str:
    return f"/services/data/v{ctx.version}/sobjects/{type_}/{record_id}"


def wire_record(ctx: Ctx, type_: str, record: dict[str, Any],
                fields: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"attributes": {"type": type_,
                                          "url": record_url(ctx, type_, record["Id"])}}
    if fields is None:
        out.update(record)
    else:
        out.update({f: record[f] for f in fields})
    return out


def find_record(ctx: Ctx, raw_id: Any, *, include_deleted: bool = False,
                type_: str | None = None) -> tuple[str, dict[str, Any]] | None:
    """Locate a record by 15/18-char id (any type unless ``type_``)."""
    record_id = canonical_id(raw_id) if isinstance(raw_id, str) else None
    if record_id is None:
        return None
    actual = type_of_id(record_id)
    if actual is None or (type_ is not None and actual != type_):
        return None
    record = ctx.state.get(actual, record_id)
    if record is None or (record["IsDeleted"] and not include_deleted):
        return None
    return actual, record


# --------------------------------------------------------------------------- coercion
def _json_error(fd: FieldDef, value: Any, kind: str) -> SfError:
    token = "START_OBJECT" if isinstance(value, dict) else (
        "START_ARRAY" if isinstance(value, list) else "VALUE_STRING")
    return SfError(400, "JSON_PARSER_ERROR",
                   f"Cannot deserialize instance of {kind} from {token} value {value!r} or "
                   f"request may be missing a required field at [line:1, column:1]",
                   [fd.name])


def _coerce_text(fd: FieldDef, value: Any) -> str | None:
    if isinstance(value, bool) or isinstance(value, dict | list):
        raise _json_error(fd, value, "string")
    text = str(value) if not isinstance(value, str) else value
    if text == "":
        return None  # Salesforce stores empty strings as null
    if len(text) > fd.max_length:
        raise SfError(400, "STRING_TOO_LONG",
                      f"{fd.display_label}: data value too large: {text[:80]} "
                      f"(max length={fd.max_length})", [fd.name])
    if fd.type == "email" and not _EMAIL_RE.match(text):
        raise SfError(400, "INVALID_EMAIL_ADDRESS",
                      f"{fd.display_label}: invalid email address: {text}", [fd.name])
    if fd.picklist:
        canonical = next((p for p in fd.picklist if p.lower() == text.lower()), None)
        if canonical is not None:
            return canonical
        if fd.restricted:
            raise SfError(400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                          f"{fd.display_label}: bad value for restricted picklist field: {text}",
                          [fd.name])
    return text


def _coerce_number(fd: FieldDef, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _json_error(fd, value, "double")
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        raise _json_error(fd, value, "double") from None
    if fd.type == "int":
        if float(number) != int(number):
            raise _json_error(fd, value, "int")
        return int(number)
    if fd.type == "currency":
        return round(float(number), 2)
    return number


def _coerce_boolean(fd: FieldDef, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _json_error(fd, value, "boolean")


def _coerce_reference(ctx: Ctx, fd: FieldDef, value: Any) -> str:
    if not isinstance(value, str):
        raise _json_error(fd, value, "id")
    record_id = canonical_id(value)
    target = type_of_id(record_id) if record_id else None
    if record_id is None or target not in fd.reference_to:
        raise SfError(400, "MALFORMED_ID",
                      f"{fd.display_label}: id value of incorrect type: {value}", [fd.name])
    record = ctx.state.get(target, record_id)
    if record is None or record["IsDeleted"]:
        raise SfError(400, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id",
                      [fd.name])
    if fd.name == "OwnerId" and record.get("IsActive") is False:
        raise SfError(400, "INACTIVE_OWNER_OR_USER",
                      f"operation performed with inactive user [{record_id}] as owner",
                      [fd.name])
    return record_id


def _coerce(ctx: Ctx, fd: FieldDef, value: Any) -> Any:
    if value is None:
        return None
    if fd.type in TEXT_TYPES:
        return _coerce_text(fd, value)
    if fd.type in NUMBER_TYPES:
        return _coerce_number(fd, value)
    if fd.type == "boolean":
        return _coerce_boolean(fd, value)
    if fd.type == "reference":
        return _coerce_reference(ctx, fd, value)
    if fd.type == "date":
        try:
            return parse_date(value).isoformat()
        except (ValueError, TypeError):
            raise _json_error(fd, value, "date") from None
    if fd.type == "datetime":
        try:
            return format_datetime(parse_datetime(value))
        except (ValueError, TypeError):
            raise _json_error(fd, value, "datetime") from None
    if fd.type == "id":
        record_id = canonical_id(value) if isinstance(value, str) else None
        if record_id is None:
            raise SfError(400, "MALFORMED_ID", f"Id: invalid id: {value}", [fd.name])
        return record_id
    raise SfError(500, "UNKNOWN_EXCEPTION", f"unsupported field type {fd.type}")


def _resolve_foreign_key(ctx: Ctx, fd: FieldDef, value: Any) -> str:
    """``"Account": {"Ext__c": "A-1"}`` — parent reference by external id (fact sheet §2)."""
    if not isinstance(value, dict):
        raise _json_error(fd, value, "sObject")
    attrs = value.get("attributes") or {}
    target_name = attrs.get("type") if isinstance(attrs, dict) else None
    if target_name is None and len(fd.reference_to) == 1:
        target_name = fd.reference_to[0]
    target = get_sobject(target_name) if isinstance(target_name, str) else None
    if target is None or target.name not in fd.reference_to:
        raise invalid_field(f"Cannot resolve the type of foreign key {fd.relationship_name}")
    keys = [k for k in value if k != "attributes"]
    if len(keys) != 1:
        raise invalid_field("Foreign key reference must specify exactly one external id field")
    ext = target.field(keys[0])
    if ext is None or not (ext.external_id or ext.name == "Id"):
        raise invalid_field(f"Field {keys[0]} is not an external id field of {target.name}")
    raw = value[keys[0]]
    if ext.name == "Id":
        found = find_record(ctx, raw, type_=target.name)
        ids = [found[1]["Id"]] if found else []
    else:
        ids = ctx.state.find_by_field(target.name, ext.name, raw)
    if len(ids) != 1:
        raise SfError(400, "INVALID_FIELD",
                      f"Foreign key external ID: {raw} not found for field {ext.name} in "
                      f"entity {target.name}", [fd.name])
    return _coerce_reference(ctx, fd, ids[0])


def _coerce_body(ctx: Ctx, sobj: SObjectDef, body: Any, *, creating: bool,
                 record_id: str | None = None) -> dict[str, Any]:
    """Map a JSON body onto canonical field names with stored values; raise the first error."""
    if not isinstance(body, dict):
        raise SfError(400, "JSON_PARSER_ERROR",
                      "Cannot deserialize instance of sObject from a non-object value")
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key == "attributes":
            continue
        fd = sobj.field(key)
        if fd is None:
            rel = sobj.relationship(key)
            if rel is not None and isinstance(value, dict):
                _check_writable(ctx, rel, creating)
                out[rel.name] = _resolve_foreign_key(ctx, rel, value)
                continue
            raise invalid_field(f"No such column '{key}' on sobject of type {sobj.name}")
        if fd.name == "Id":
            if creating and not ctx.admin:
                raise invalid_field("Id: cannot specify Id in an insert call", ["Id"])
            if not creating:
                body_id = canonical_id(value) if isinstance(value, str) else None
                if body_id != record_id:
                    raise SfError(400, "MALFORMED_ID", f"Id in body does not match: {value}",
                                  ["Id"])
                continue
        else:
            _check_writable(ctx, fd, creating)
        out[fd.name] = _coerce(ctx, fd, value)
    return out


def _check_writable(ctx: Ctx, fd: FieldDef, creating: bool) -> None:
    if ctx.admin and (fd.name in _ADMIN_SETTABLE or not fd.calculated):
        return
    allowed = fd.createable if creating else fd.updateable
    if not allowed:
        raise SfError(400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                      f"Unable to create/update fields: {fd.name}. Please check the security "
                      "settings of this field and verify that it is read/write for your "
                      "profile or permission set.", [fd.name])


# --------------------------------------------------------------------------- derivation
def _derive(ctx: Ctx, sobj: SObjectDef, record: dict[str, Any], changes: dict[str, Any],
            before: dict[str, Any] | None) -> None:
    """Maintain calculated fields, mirroring the standard objects' behaviour."""
    name = sobj.name
    now = format_datetime(ctx.state.now())
    if name in _NAME_OBJECTS:
        record["Name"] = " ".join(p for p in (record["FirstName"], record["LastName"]) if p)
    elif name == "Opportunity":
        stage = OPPORTUNITY_STAGES.get(record["StageName"] or "", (None, False, False))
        stage_changed = before is None or before["StageName"] != record["StageName"]
        if stage_changed and "Probability" not in changes and stage[0] is not None:
            record["Probability"] = stage[0]
        record["IsClosed"], record["IsWon"] = stage[1], stage[2]
    elif name == "Case":
        record["IsClosed"] = record["Status"] in CASE_CLOSED_STATUSES
        if record["IsClosed"] and not (before and before["IsClosed"]):
            record["ClosedDate"] = now
        elif not record["IsClosed"]:
            record["ClosedDate"] = None
        if before is None:
            record["CaseNumber"] = ctx.state.next_case_number()
    elif name == "Task":
        record["IsClosed"] = record["Status"] in TASK_CLOSED_STATUSES
        record["AccountId"] = _task_account(ctx, record)
        who, what = record["WhoId"], record["WhatId"]
        if who and what and who.startswith("00Q"):
            # Unconfirmed exact code (fact sheet §8); behaviour (refusal) is documented.
            raise SfError(400, "FIELD_INTEGRITY_EXCEPTION",
                          "When the Name field is a lead, the Related To field must be empty.",
                          ["WhatId"])
    elif name == "FeedItem" and record["Type"] == "TextPost" and not record["Body"]:
        raise SfError(400, "REQUIRED_FIELD_MISSING", "Required fields are missing: [Body]",
                      ["Body"])


def _task_account(ctx: Ctx, record: dict[str, Any]) -> str | None:
    what = record["WhatId"]
    if what:
        if what.startswith("001"):
            return str(what)
        found = find_record(ctx, what)
        if found is not None:
            return found[1].get("AccountId")
    who = record["WhoId"]
    if who and who.startswith("003"):
        found = find_record(ctx, who)
        if found is not None:
            return found[1].get("AccountId")
    return None


def _check_unique(ctx: Ctx, sobj: SObjectDef, record: dict[str, Any]) -> None:
    # "enforce_unique": False (a test switch) stops enforcing Unique on custom fields.
    custom_unique = bool(ctx.state.config.get("enforce_unique", True))
    for fd in sobj.fields:
        if fd.custom and not custom_unique:
            continue
        if fd.unique and record.get(fd.name) is not None:
            clash = [i for i in ctx.state.find_by_field(sobj.name, fd.name, record[fd.name])
                     if i != record["Id"]]
            if clash:
                raise SfError(400, "DUPLICATE_VALUE",
                              f"duplicate value found: {fd.name} duplicates value on record "
                              f"with id: {clash[0]}", [])


def _check_required(sobj: SObjectDef, record: dict[str, Any], fields: list[FieldDef]) -> None:
    missing = [fd.name for fd in fields if record.get(fd.name) is None]
    if missing:
        raise SfError(400, "REQUIRED_FIELD_MISSING",
                      f"Required fields are missing: [{', '.join(missing)}]", missing)


# --------------------------------------------------------------------------- operations
def create(ctx: Ctx, type_name: str, body: Any, *, status: int = 404) -> str:
    sobj = require_sobject(type_name, status=status)
    if not sobj.createable and not ctx.admin:
        raise SfError(400, "INVALID_TYPE_FOR_OPERATION",
                      f"entity type {sobj.name} does not support insert")
    check_lock(ctx, sobj.name, None)
    changes = _coerce_body(ctx, sobj, body, creating=True)
    state = ctx.state
    record = state.blank(sobj.name)
    for fd in sobj.fields:
        if fd.defaulted and fd.default is not None:
            record[fd.name] = ctx.user_id if fd.default == "$USER" else fd.default
    stamp = format_datetime(state.now())
    record.update({"IsDeleted": False, "CreatedDate": stamp, "LastModifiedDate": stamp,
                   "SystemModstamp": stamp, "CreatedById": ctx.user_id,
                   "LastModifiedById": ctx.user_id})
    # An explicit null on a defaulted field falls back to the default, as the platform does.
    record.update({k: v for k, v in changes.items()
                   if v is not None or not (sobj.field(k) or _NO_FIELD).defaulted})
    _check_required(sobj, record, [f for f in sobj.fields if f.required_on_create])
    record["Id"] = changes.get("Id") or state.new_id(sobj.key_prefix)
    if type_of_id(record["Id"]) != sobj.name:
        raise SfError(400, "MALFORMED_ID",
                      f"{sobj.name} ID: id value of incorrect type: {record['Id']}", ["Id"])
    if state.get(sobj.name, record["Id"]) is not None:
        raise SfError(400, "DUPLICATE_VALUE", f"duplicate value found: Id {record['Id']}", [])
    _derive(ctx, sobj, record, changes, None)
    _check_unique(ctx, sobj, record)
    _check_duplicates(ctx, sobj, record, None)
    state.put(sobj.name, record)
    state.capture(Change(sobj.name, record["Id"], "CREATE", None, record, ctx.user_id,
                         ctx.change_origin()))
    return str(record["Id"])


def _load_for_write(ctx: Ctx, sobj: SObjectDef, raw_id: str) -> dict[str, Any]:
    record_id = canonical_id(raw_id)
    if record_id is None or type_of_id(record_id) != sobj.name:
        raise SfError(400, "MALFORMED_ID",
                      f"{sobj.name} ID: id value of incorrect type: {raw_id}", ["Id"])
    record = ctx.state.get(sobj.name, record_id)
    if record is None:
        raise not_found()
    if record["IsDeleted"]:
        raise SfError(404, "ENTITY_IS_DELETED", "entity is deleted", [])
    return record


def update(ctx: Ctx, type_name: str, raw_id: str, body: Any, *, status: int = 404) -> str:
    sobj = require_sobject(type_name, status=status)
    before = _load_for_write(ctx, sobj, raw_id)
    if not sobj.updateable and not ctx.admin:
        raise SfError(400, "INVALID_TYPE_FOR_OPERATION",
                      f"entity type {sobj.name} does not support update")
    if sobj.name == "Lead" and before["IsConverted"] and not ctx.admin:
        raise SfError(400, "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead",
                      [])
    check_lock(ctx, sobj.name, before["Id"])
    changes = _coerce_body(ctx, sobj, body, creating=False, record_id=before["Id"])
    record = dict(before)
    for key, value in changes.items():
        fd = sobj.field(key) or _NO_FIELD
        record[key] = fd.default if value is None and fd.type == "boolean" else value
    # Clearing a required field is refused; read-only ones are maintained by the server.
    _check_required(sobj, record,
                    [f for f in sobj.fields if not f.nillable and f.name in changes])
    stamp = format_datetime(ctx.state.now())
    record.update({"LastModifiedDate": stamp, "SystemModstamp": stamp,
                   "LastModifiedById": ctx.user_id})
    if ctx.admin:
        record.update({k: v for k, v in changes.items() if k in _ADMIN_SETTABLE})
    _derive(ctx, sobj, record, changes, before)
    _check_unique(ctx, sobj, record)
    _check_duplicates(ctx, sobj, record, before)
    ctx.state.put(sobj.name, record)
    ctx.state.capture(Change(sobj.name, record["Id"], "UPDATE", before, record, ctx.user_id,
                             ctx.change_origin()))
    return str(record["Id"])


def upsert(ctx: Ctx, type_name: str, field_name: str, value: str, body: Any, *,
           update_only: bool = False, status: int = 404) -> tuple[str, bool]:
    """Upsert by external id; returns (id, created). Raises 300 on ambiguous matches."""
    sobj = require_sobject(type_name, status=status)
    fd = sobj.field(field_name)
    if fd is None or not (fd.external_id or fd.name == "Id"):
        raise not_found("Provided external ID field does not exist or is not accessible: "
                        f"{field_name}")
    if not isinstance(body, dict):
        raise SfError(400, "JSON_PARSER_ERROR",
                      "Cannot deserialize instance of sObject from a non-object value")
    body = dict(body)
    in_body = next((k for k in body if k.lower() == fd.name.lower()), None)
    if in_body is not None:
        if fd.name == "Id" or str(body[in_body]).lower() != str(value).lower():
            raise invalid_field(f"The value of the {fd.name} field in the request body does "
                                "not match the value in the URL", [fd.name])
        del body[in_body]
    if fd.name == "Id":
        found = find_record(ctx, value, type_=sobj.name)
        if found is None:
            raise not_found()
        ids = [found[1]["Id"]]
    else:
        ids = ctx.state.find_by_field(sobj.name, fd.name, value)
    if len(ids) > 1:
        raise SfError(300, "MULTIPLE_CHOICES", "More than one record found for external id",
                      extra={"records": [record_url(ctx, sobj.name, i) for i in ids]})
    if ids:
        return update(ctx, sobj.name, ids[0], body), False
    if update_only:
        raise not_found()
    return create(ctx, sobj.name, {**body, fd.name: value}), True


def delete(ctx: Ctx, raw_id: str, *, type_name: str | None = None) -> str:
    """Soft delete (recycle bin) with the standard cascades; returns the 18-char id."""
    record_id = canonical_id(raw_id) if isinstance(raw_id, str) else None
    actual = type_of_id(record_id) if record_id else None
    if record_id is None or actual is None or (type_name and actual != type_name):
        label = type_name or "Record"
        raise SfError(400, "MALFORMED_ID", f"{label} ID: id value of incorrect type: {raw_id}",
                      ["Id"])
    sobj = SCHEMA[actual]
    record = _load_for_write(ctx, sobj, record_id)
    if not sobj.deletable:
        raise SfError(400, "INVALID_TYPE_FOR_OPERATION",
                      f"entity type {sobj.name} does not support delete")
    check_lock(ctx, sobj.name, record_id)
    _soft_delete(ctx, sobj.name, record)
    return record_id


def undelete(ctx: Ctx, raw_id: str) -> str:
    """Restore a recycle-bin record (admin only: REST has no undelete resource)."""
    record_id = canonical_id(raw_id) if isinstance(raw_id, str) else None
    type_ = type_of_id(record_id) if record_id else None
    record = ctx.state.get(type_, record_id) if type_ and record_id else None
    if record is None:
        raise SfError(400, "INVALID_ID_FIELD", f"invalid record id: {raw_id}", ["Id"])
    if not record["IsDeleted"]:
        raise SfError(400, "UNDELETE_FAILED", "Entity is not in the recycle bin", [])
    assert type_ is not None
    stamp = format_datetime(ctx.state.now())
    restored = {**record, "IsDeleted": False, "LastModifiedDate": stamp, "SystemModstamp": stamp,
                "LastModifiedById": ctx.user_id}
    _check_unique(ctx, SCHEMA[type_], restored)
    ctx.state.put(type_, restored)
    ctx.state.capture(Change(type_, record["Id"], "UNDELETE", record, restored, ctx.user_id,
                             ctx.change_origin()))
    return str(record["Id"])


def check_lock(ctx: Ctx, type_name: str, record_id: str | None) -> None:
    """Raise the injected UNABLE_TO_LOCK_ROW fault for DML on ``type_name``, if any."""
    fault = ctx.lock_fault
    if fault is None or not fault.applies_to(type_name):
        return
    message = fault.message or ("unable to obtain exclusive access to this record"
                                + (f" or 1 records: {record_id}" if record_id else ""))
    raise SfError(400, "UNABLE_TO_LOCK_ROW", message, [])


def _check_duplicates(ctx: Ctx, sobj: SObjectDef, record: dict[str, Any],
                      before: dict[str, Any] | None) -> None:
    """Standard Lead/Contact duplicate rules on Email (see ``_duplicates``)."""
    if (sobj.name not in DUPLICATE_TYPES or ctx.admin or ctx.allow_duplicates
            or not ctx.state.config.get("duplicate_rules", True)):
        return
    email = record.get("Email")
    if not email or (sobj.name == "Lead" and record.get("IsConverted")):
        return
    if before is not None and str(before.get("Email") or "").lower() == str(email).lower():
        return
    matches = find_duplicates(ctx.state, str(email), {record["Id"], *ctx.duplicate_exempt})
    if matches:
        raise duplicates_error(sobj.name, ctx.version, matches,
                               ctx.include_record_details)


def _soft_delete(ctx: Ctx, type_: str, record: dict[str, Any]) -> None:
    stamp = format_datetime(ctx.state.now())
    deleted = {**record, "IsDeleted": True, "LastModifiedDate": stamp,
               "SystemModstamp": stamp, "LastModifiedById": ctx.user_id}
    ctx.state.put(type_, deleted)
    ctx.state.capture(Change(type_, record["Id"], "DELETE", record, deleted, ctx.user_id,
                             ctx.change_origin()))
    ctx.state.log_delete(type_, record["Id"], stamp)
    for child in SCHEMA.values():
        cascading = [f for f in child.fields if f.cascade_delete and type_ in f.reference_to]
        if not cascading:
            continue
        for row in ctx.state.live(child.name):
            if any(row[f.name] == record["Id"] for f in cascading):
                _soft_delete(ctx, child.name, row)
