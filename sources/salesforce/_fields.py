"""Which Salesforce fields become which ``salesforce.changes`` fields, per object.

One table serves both paths into the topic, so a record converges to the same shape whether
it arrived as a change event (Avro-decoded: dates as epoch days, numbers as numbers) or as a
SOQL row (JSON: dates as ``YYYY-MM-DD`` strings).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

__all__ = ["OBJECTS", "ObjectSpec", "convert", "spec_for"]

_EPOCH_DAY = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class ObjectSpec:
    name: str
    key_prefix: str
    # (Salesforce field, salesforce.changes field, kind: str | bool | float | date)
    fields: tuple[tuple[str, str, str], ...]
    # User has no IsDeleted and no recycle bin: never queried with queryAll.
    deletable: bool = True

    def soql_fields(self, custom: list[str], with_deleted: bool) -> list[str]:
        names = ["Id", *(f for f, _, _ in self.fields), *custom, "SystemModstamp",
                 "LastModifiedById"]
        if with_deleted and self.deletable:
            names.append("IsDeleted")
        return list(dict.fromkeys(names))


_OWNER = ("OwnerId", "owner_id", "str")

OBJECTS: dict[str, ObjectSpec] = {spec.name: spec for spec in (
    ObjectSpec("Contact", "003", (
        ("Email", "email", "str"), ("Phone", "phone", "str"),
        ("MobilePhone", "mobile_phone", "str"), ("FirstName", "first_name", "str"),
        ("LastName", "last_name", "str"), ("AccountId", "account_id", "str"), _OWNER)),
    ObjectSpec("Lead", "00Q", (
        ("Email", "email", "str"), ("Phone", "phone", "str"),
        ("MobilePhone", "mobile_phone", "str"), ("FirstName", "first_name", "str"),
        ("LastName", "last_name", "str"), ("Company", "company", "str"),
        ("Status", "status", "str"), ("IsConverted", "is_converted", "bool"),
        ("ConvertedContactId", "converted_contact_id", "str"),
        ("ConvertedAccountId", "converted_account_id", "str"), _OWNER)),
    ObjectSpec("Account", "001", (
        ("Name", "name", "str"), ("Website", "website", "str"), ("Phone", "phone", "str"),
        ("Industry", "industry", "str"), ("Type", "type", "str"),
        ("AnnualRevenue", "annual_revenue", "float"), _OWNER)),
    ObjectSpec("Opportunity", "006", (
        ("Name", "name", "str"), ("StageName", "stage_name", "str"),
        ("CloseDate", "close_date", "date"), ("Amount", "amount", "float"),
        ("IsClosed", "is_closed", "bool"), ("AccountId", "account_id", "str"), _OWNER)),
    ObjectSpec("Case", "500", (
        ("Subject", "subject", "str"), ("Status", "status", "str"),
        ("IsClosed", "is_closed", "bool"), ("ContactId", "contact_id", "str"),
        ("AccountId", "account_id", "str"), _OWNER)),
    ObjectSpec("User", "005", (
        ("Username", "username", "str"), ("Email", "email", "str"),
        ("FirstName", "first_name", "str"), ("LastName", "last_name", "str"),
        ("IsActive", "is_active", "bool")), deletable=False),
)}


def spec_for(sobject: str) -> ObjectSpec:
    """The mapping of ``sobject``; an object we have no typed fields for still carries its
    id, change type and configured custom fields."""
    return OBJECTS.get(sobject) or ObjectSpec(sobject, "", ())


def convert(kind: str, value: Any) -> Any:
    """A Salesforce value (SOQL JSON or decoded Avro) as the change record holds it."""
    if value is None:
        return None
    if kind == "bool":
        return bool(value)
    if kind == "float":
        return float(value)
    if kind == "date":
        if isinstance(value, str):
            return (dt.date.fromisoformat(value[:10]) - _EPOCH_DAY).days
        return int(value)  # Avro: days since the epoch already
    return str(value)
