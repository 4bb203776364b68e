"""Expand the bitmap fields of a Pub/Sub change event header (``changedFields``,
``nulledFields``, ``diffFields``) into field names.

Follows Salesforce's ``ChangeEventHeaderUtility.py`` (forcedotcom/pub-sub-api) and the
"Event Deserialization Considerations" page: the first element, when it starts with ``0x``,
is a bitmap over the top-level fields of the event's Avro schema (the hex digits read as one
unsigned big-endian number, bit ``i`` = the field at position ``i``); each further element
``{pos}-0x{bits}`` is a bitmap over the fields of the compound (record) field at ``pos``,
reported as ``Parent.Child``. A compound field's type is ``["null", record]``, or
``["string", record]`` / ``["null", "string", record]`` for switchable person names.
"""

from __future__ import annotations

from typing import Any

__all__ = ["expand", "named_records"]


def named_records(schema: Any, into: dict[str, dict[str, Any]] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """Every record type defined in ``schema``, by full and short name: a compound type
    defined once (an Address) is referred to by name where it is used again."""
    found = {} if into is None else into
    if isinstance(schema, list):
        for branch in schema:
            named_records(branch, found)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            name = str(schema["name"])
            namespace = schema.get("namespace")
            found[name.rsplit(".", 1)[-1]] = schema
            found[f"{namespace}.{name}" if namespace and "." not in name else name] = schema
            for field in schema.get("fields", []):
                named_records(field["type"], found)
        elif schema.get("type") in ("array", "map"):
            named_records(schema.get("items") or schema.get("values"), found)
    return found


def _value_schema(field_type: Any, records: dict[str, dict[str, Any]]) -> Any:
    if isinstance(field_type, list):
        names = [t if isinstance(t, str) else t.get("type") for t in field_type]
        if len(field_type) == 2 and names[0] in ("null", "string"):
            field_type = field_type[1]
        elif len(field_type) == 3 and names[0] == "null" and names[1] == "string":
            field_type = field_type[2]
    if isinstance(field_type, str):
        return records.get(field_type, field_type)
    return field_type


def _names(fields: list[dict[str, Any]], bitmap: str) -> list[str]:
    digits = bitmap[2:] if bitmap[:2].lower() == "0x" else bitmap
    value = int(digits or "0", 16)
    if value.bit_length() > len(fields):
        raise ValueError(f"bitmap {bitmap} names field {value.bit_length() - 1}; the schema has "
                         f"{len(fields)}")
    return [fields[i]["name"] for i in range(value.bit_length()) if value >> i & 1]


def expand(schema: dict[str, Any], bitmaps: list[str],
           records: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Bitmap strings -> field names (top-level fields first, then ``Parent.Child``)."""
    if not bitmaps:
        return []
    records = records if records is not None else named_records(schema)
    fields: list[dict[str, Any]] = schema["fields"]
    items = list(bitmaps)
    names: list[str] = []
    if items[0].startswith("0x"):
        names += _names(fields, items.pop(0))
    for item in items:
        position, sep, bits = item.partition("-")
        if not sep:
            continue
        parent = fields[int(position)]
        child = _value_schema(parent["type"], records)
        if isinstance(child, dict) and child.get("type") == "record":
            names += [f"{parent['name']}.{name}" for name in _names(child["fields"], bits)]
    return names
