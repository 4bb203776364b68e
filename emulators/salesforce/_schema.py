"""The emulated org's metadata: sObjects, fields, relationships.

Only what frontforce touches (fact sheet §8). Everything is declarative so that adding an
object or field is a one-line change; writes, SOQL and describe all read from here.
Names are matched case-insensitively, as Salesforce does, but always *returned* canonical.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from emulators.salesforce._ids import KEY_PREFIXES

__all__ = [
    "CASE_CLOSED_STATUSES",
    "FieldDef",
    "LEAD_STATUSES",
    "NUMBER_TYPES",
    "OPPORTUNITY_STAGES",
    "PREFIX_TO_TYPE",
    "SCHEMA",
    "SObjectDef",
    "TASK_CLOSED_STATUSES",
    "TEXT_TYPES",
    "get_sobject",
    "type_of_id",
]

TEXT_TYPES = frozenset(
    {"string", "email", "phone", "url", "textarea", "picklist", "combobox", "multipicklist"}
)
NUMBER_TYPES = frozenset({"double", "currency", "int", "percent"})
# Default lengths per type when a field does not set one (describe reports them).
_DEFAULT_LENGTH = {"string": 255, "email": 80, "phone": 40, "url": 255, "textarea": 32000,
                   "picklist": 255, "combobox": 255, "multipicklist": 4099, "id": 18,
                   "reference": 18}


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str
    length: int | None = None
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    # defaultedOnCreate: the server fills it when absent; `default` is the value ("$USER" =
    # the calling user, used for OwnerId).
    defaulted: bool = False
    default: Any = None
    external_id: bool = False
    unique: bool = False
    id_lookup: bool = False
    custom: bool = False
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    child_relationship: str | None = None  # name of the inverse relationship on the parent
    picklist: tuple[str, ...] = ()
    restricted: bool = False
    calculated: bool = False
    name_field: bool = False
    auto_number: bool = False
    # Deleting the referenced parent deletes this record too (Account -> Contacts, etc.).
    cascade_delete: bool = False
    label: str | None = None

    @property
    def display_label(self) -> str:
        if self.label:
            return self.label
        if self.type == "reference" and self.name.endswith("Id"):
            return self.name[:-2] + " ID"
        return self.name

    @property
    def max_length(self) -> int:
        return self.length if self.length is not None else _DEFAULT_LENGTH.get(self.type, 0)

    @property
    def required_on_create(self) -> bool:
        # Fact sheet §2: required on create iff createable && !nillable && !defaultedOnCreate.
        return self.createable and not self.nillable and not self.defaulted

    @property
    def polymorphic(self) -> bool:
        return len(self.reference_to) > 1


@dataclass(frozen=True)
class SObjectDef:
    name: str
    label_plural: str
    fields: tuple[FieldDef, ...]
    createable: bool = True
    updateable: bool = True
    deletable: bool = True
    queryable: bool = True
    custom: bool = False
    label: str | None = None
    _by_lower: dict[str, FieldDef] = field(default_factory=dict, compare=False, repr=False)
    _rel_by_lower: dict[str, FieldDef] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for f in self.fields:
            self._by_lower[f.name.lower()] = f
            if f.relationship_name:
                self._rel_by_lower[f.relationship_name.lower()] = f

    @property
    def key_prefix(self) -> str:
        return KEY_PREFIXES[self.name]

    def field(self, name: str) -> FieldDef | None:
        return self._by_lower.get(name.lower())

    def relationship(self, name: str) -> FieldDef | None:
        return self._rel_by_lower.get(name.lower())

    def external_id_fields(self) -> list[FieldDef]:
        return [f for f in self.fields if f.external_id]

    def child_relationships(self) -> list[tuple[str, FieldDef]]:
        """(child object name, lookup field) pairs whose lookup points at this object."""
        out = []
        for child in SCHEMA.values():
            for f in child.fields:
                if self.name in f.reference_to and f.child_relationship:
                    out.append((child.name, f))
        return out

    def child_relationship(self, name: str) -> tuple[str, FieldDef] | None:
        for child_name, f in self.child_relationships():
            if f.child_relationship and f.child_relationship.lower() == name.lower():
                return child_name, f
        return None


def _ref(name: str, to: Iterable[str], rel: str, child: str | None = None, **kw: Any) -> FieldDef:
    return FieldDef(name, "reference", reference_to=tuple(to), relationship_name=rel,
                    child_relationship=child, **kw)


def _ro(name: str, type_: str, **kw: Any) -> FieldDef:
    """Read-only (system-maintained or derived) field."""
    return FieldDef(name, type_, createable=False, updateable=False, **kw)


def _system(owner: bool = True, owner_child: str | None = None) -> tuple[FieldDef, ...]:
    fields = [
        FieldDef("Id", "id", nillable=False, createable=False, updateable=False, defaulted=True,
                 id_lookup=True),
        _ro("IsDeleted", "boolean", nillable=False, defaulted=True, default=False),
        _ro("CreatedDate", "datetime", nillable=False, defaulted=True),
        _ref("CreatedById", ["User"], "CreatedBy", nillable=False, createable=False,
             updateable=False, defaulted=True),
        _ro("LastModifiedDate", "datetime", nillable=False, defaulted=True),
        _ref("LastModifiedById", ["User"], "LastModifiedBy", nillable=False, createable=False,
             updateable=False, defaulted=True),
        _ro("SystemModstamp", "datetime", nillable=False, defaulted=True),
    ]
    if owner:
        fields.append(_ref("OwnerId", ["User"], "Owner", owner_child, nillable=False,
                           defaulted=True, default="$USER"))
    return tuple(fields)


def _pick(name: str, values: Iterable[str], **kw: Any) -> FieldDef:
    return FieldDef(name, "picklist", picklist=tuple(values), **kw)


_INDUSTRIES = ("Agriculture", "Apparel", "Banking", "Biotechnology", "Chemicals",
               "Communications", "Construction", "Consulting", "Education", "Electronics",
               "Energy", "Engineering", "Entertainment", "Environmental", "Finance",
               "Food & Beverage", "Government", "Healthcare", "Hospitality", "Insurance",
               "Machinery", "Manufacturing", "Media", "Not For Profit", "Recreation", "Retail",
               "Shipping", "Technology", "Telecommunications", "Transportation", "Utilities",
               "Other")
LEAD_STATUSES = ("Open - Not Contacted", "Working - Contacted", "Closed - Converted",
                 "Closed - Not Converted")
# StageName -> (default probability, IsClosed, IsWon); mirrors the OpportunityStage table.
OPPORTUNITY_STAGES: dict[str, tuple[int, bool, bool]] = {
    "Prospecting": (10, False, False), "Qualification": (10, False, False),
    "Needs Analysis": (20, False, False), "Value Proposition": (50, False, False),
    "Id. Decision Makers": (60, False, False), "Perception Analysis": (70, False, False),
    "Proposal/Price Quote": (75, False, False), "Negotiation/Review": (90, False, False),
    "Closed Won": (100, True, True), "Closed Lost": (0, True, False),
}
CASE_CLOSED_STATUSES = frozenset({"Closed"})
TASK_CLOSED_STATUSES = frozenset({"Completed"})
_WHAT_TARGETS = ("Account", "Opportunity", "Case")

_OBJECTS = [
    SObjectDef("Account", "Accounts", _system() + (
        FieldDef("Name", "string", nillable=False, name_field=True, id_lookup=False),
        FieldDef("Website", "url"),
        FieldDef("Phone", "phone"),
        _pick("Industry", _INDUSTRIES),
        _pick("Type", ("Prospect", "Customer - Direct", "Customer - Channel",
                       "Channel Partner / Reseller", "Installation Partner",
                       "Technology Partner", "Other")),
        FieldDef("AnnualRevenue", "currency"),
        FieldDef("ARR__c", "currency", custom=True, label="ARR"),
        _pick("Tier__c", ("Tier 1", "Tier 2", "Tier 3"), custom=True, label="Tier"),
    )),
    SObjectDef("Contact", "Contacts", _system() + (
        FieldDef("FirstName", "string", length=40),
        FieldDef("LastName", "string", length=80, nillable=False),
        _ro("Name", "string", length=121, nillable=False, name_field=True, calculated=True),
        FieldDef("Email", "email", id_lookup=True),
        FieldDef("Phone", "phone"),
        FieldDef("MobilePhone", "phone"),
        FieldDef("Title", "string", length=128),
        FieldDef("HasOptedOutOfEmail", "boolean", nillable=False, defaulted=True,
                 default=False),
        _ref("AccountId", ["Account"], "Account", "Contacts", cascade_delete=True),
    )),
    SObjectDef("Lead", "Leads", _system() + (
        FieldDef("FirstName", "string", length=40),
        FieldDef("LastName", "string", length=80, nillable=False),
        _ro("Name", "string", length=121, nillable=False, name_field=True, calculated=True),
        FieldDef("Company", "string", nillable=False),
        FieldDef("Email", "email", id_lookup=True),
        FieldDef("Phone", "phone"),
        FieldDef("MobilePhone", "phone"),
        _pick("Status", LEAD_STATUSES, nillable=False, defaulted=True,
              default="Open - Not Contacted", restricted=True),
        _pick("LeadSource", ("Web", "Phone Inquiry", "Partner Referral", "Purchased List",
                             "Other")),
        # Read-only: set by lead conversion (actions/standard/convertLead, see _convert).
        _ro("IsConverted", "boolean", nillable=False, defaulted=True, default=False),
        _ro("ConvertedDate", "date"),
        _ref("ConvertedAccountId", ["Account"], "ConvertedAccount", createable=False,
             updateable=False),
        _ref("ConvertedContactId", ["Contact"], "ConvertedContact", createable=False,
             updateable=False),
        _ref("ConvertedOpportunityId", ["Opportunity"], "ConvertedOpportunity",
             createable=False, updateable=False),
        # The org customization frontforce documents for UpsertLead: one Lead per handle.
        FieldDef("Front_Handle__c", "string", custom=True, external_id=True, unique=True,
                 id_lookup=True, label="Front Handle"),
    )),
    SObjectDef("Opportunity", "Opportunities", _system() + (
        FieldDef("Name", "string", length=120, nillable=False, name_field=True),
        _pick("StageName", tuple(OPPORTUNITY_STAGES), nillable=False, restricted=True),
        FieldDef("CloseDate", "date", nillable=False),
        FieldDef("Amount", "currency"),
        FieldDef("Probability", "percent", defaulted=True),
        _ro("IsClosed", "boolean", nillable=False, defaulted=True, default=False,
            calculated=True),
        _ro("IsWon", "boolean", nillable=False, defaulted=True, default=False,
            calculated=True),
        _ref("AccountId", ["Account"], "Account", "Opportunities", cascade_delete=True),
    )),
    SObjectDef("Case", "Cases", _system() + (
        FieldDef("CaseNumber", "string", length=30, nillable=False, createable=False,
                 updateable=False, defaulted=True, auto_number=True, name_field=True),
        FieldDef("Subject", "string"),
        FieldDef("Description", "textarea"),
        _pick("Status", ("New", "Working", "Escalated", "Closed"), defaulted=True,
              default="New", restricted=True),
        _pick("Origin", ("Phone", "Email", "Web")),
        _pick("Priority", ("High", "Medium", "Low"), defaulted=True, default="Medium"),
        FieldDef("SuppliedEmail", "email"),
        _ro("IsClosed", "boolean", nillable=False, defaulted=True, default=False,
            calculated=True),
        _ro("ClosedDate", "datetime"),
        _ref("ContactId", ["Contact"], "Contact", "Cases"),
        _ref("AccountId", ["Account"], "Account", "Cases", cascade_delete=True),
        FieldDef("Front_Conversation_Id__c", "string", custom=True, external_id=True,
                 unique=True, id_lookup=True, label="Front Conversation Id"),
    )),
    SObjectDef("User", "Users", _system(owner=False) + (
        FieldDef("Username", "string", length=80, nillable=False, unique=True, id_lookup=True),
        FieldDef("Email", "email", length=128, nillable=False),
        FieldDef("FirstName", "string", length=40),
        FieldDef("LastName", "string", length=80, nillable=False),
        _ro("Name", "string", length=121, nillable=False, name_field=True, calculated=True),
        FieldDef("Alias", "string", length=8, nillable=False),
        FieldDef("IsActive", "boolean", nillable=False, defaulted=True, default=True),
        _ro("UserType", "picklist", defaulted=True, default="Standard",
            picklist=("Standard", "AutomatedProcess")),
    ), deletable=False),
    SObjectDef("Task", "Tasks", _system() + (
        FieldDef("Subject", "combobox"),
        FieldDef("Description", "textarea"),
        _pick("Status", ("Not Started", "In Progress", "Completed", "Waiting on someone else",
                         "Deferred"), nillable=False, defaulted=True, default="Not Started",
              restricted=True),
        _pick("Priority", ("High", "Normal", "Low"), nillable=False, defaulted=True,
              default="Normal", restricted=True),
        FieldDef("ActivityDate", "date"),
        _pick("Type", ("Call", "Email", "Meeting", "Other")),
        # Create-only (fact sheet §8): updateable=False.
        _pick("TaskSubtype", ("Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn"),
              updateable=False, restricted=True),
        _ro("IsClosed", "boolean", nillable=False, defaulted=True, default=False,
            calculated=True),
        _ref("WhoId", ["Contact", "Lead"], "Who", "Tasks", cascade_delete=True),
        _ref("WhatId", _WHAT_TARGETS, "What", "Tasks", cascade_delete=True),
        _ref("AccountId", ["Account"], "Account", createable=False, updateable=False,
             calculated=True),
        FieldDef("Front_Message_Id__c", "string", custom=True, external_id=True, unique=True,
                 id_lookup=True, label="Front Message Id"),
        FieldDef("Front_Conversation_Id__c", "string", custom=True,
                 label="Front Conversation Id"),
    )),
    SObjectDef("FeedItem", "Feed Items", _system(owner=False) + (
        _ref("ParentId", ("User", "Account", "Contact", "Lead", "Opportunity", "Case"),
             "Parent", nillable=False, updateable=False, cascade_delete=True),
        FieldDef("Body", "textarea", length=10000),
        _pick("Type", ("TextPost", "LinkPost", "ContentPost"), defaulted=True,
              default="TextPost", updateable=False),
        FieldDef("IsRichText", "boolean", nillable=False, defaulted=True, default=False),
    ), updateable=True),
    SObjectDef("Organization", "Organizations", _system(owner=False) + (
        _ro("Name", "string", nillable=False, name_field=True),
        _ro("OrganizationType", "string"),
        _ro("IsSandbox", "boolean", nillable=False, defaulted=True, default=False),
        _ro("InstanceName", "string"),
    ), createable=False, updateable=False, deletable=False),
]

SCHEMA: dict[str, SObjectDef] = {o.name: o for o in _OBJECTS}
_SCHEMA_LOWER = {name.lower(): o for name, o in SCHEMA.items()}
PREFIX_TO_TYPE = {o.key_prefix: o.name for o in _OBJECTS}


def get_sobject(name: str) -> SObjectDef | None:
    return _SCHEMA_LOWER.get(name.lower())


def type_of_id(record_id: str) -> str | None:
    return PREFIX_TO_TYPE.get(record_id[:3])
