"""Describe-style payloads: versions, resources, global and per-object describe."""

from __future__ import annotations

from typing import Any

from emulators.salesforce._schema import NUMBER_TYPES, SCHEMA, TEXT_TYPES, FieldDef, SObjectDef

__all__ = [
    "MAX_VERSION",
    "MIN_VERSION",
    "describe_global",
    "describe_sobject",
    "resources",
    "sobject_basic",
    "versions",
]

MIN_VERSION, MAX_VERSION = 31, 66
_SOAP_TYPES = {"id": "tns:ID", "reference": "tns:ID", "boolean": "xsd:boolean",
               "double": "xsd:double", "currency": "xsd:double", "percent": "xsd:double",
               "int": "xsd:int", "date": "xsd:date", "datetime": "xsd:dateTime"}


def _release_label(major: int) -> str:
    # v59.0 is Winter '24; three releases a year (Winter, Spring, Summer).
    k = major - 59
    season = ("Winter", "Spring", "Summer")[k % 3]
    return f"{season} '{24 + k // 3:02d}"


def versions() -> list[dict[str, str]]:
    return [{"label": _release_label(v), "url": f"/services/data/v{v}.0", "version": f"{v}.0"}
            for v in range(MIN_VERSION, MAX_VERSION + 1)]


def resources(version: str) -> dict[str, str]:
    base = f"/services/data/v{version}"
    return {name: f"{base}/{name}" for name in ("sobjects", "query", "queryAll", "limits",
                                                "composite", "actions")}


def _urls(sobj: SObjectDef, version: str) -> dict[str, str]:
    base = f"/services/data/v{version}/sobjects/{sobj.name}"
    return {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"}


def sobject_basic(sobj: SObjectDef, version: str) -> dict[str, Any]:
    return {
        "name": sobj.name,
        "label": sobj.label or sobj.name,
        "labelPlural": sobj.label_plural,
        "keyPrefix": sobj.key_prefix,
        "createable": sobj.createable,
        "updateable": sobj.updateable,
        "deletable": sobj.deletable,
        "queryable": sobj.queryable,
        "retrieveable": True,
        "searchable": True,
        "replicateable": True,
        "triggerable": True,
        "undeletable": sobj.deletable,
        "custom": sobj.custom,
        "customSetting": False,
        "urls": _urls(sobj, version),
    }


def describe_global(version: str) -> dict[str, Any]:
    return {"encoding": "UTF-8", "maxBatchSize": 200,
            "sobjects": [sobject_basic(s, version) for s in SCHEMA.values()]}


def _field(fd: FieldDef) -> dict[str, Any]:
    textual = fd.type in TEXT_TYPES or fd.type in ("id", "reference")
    default = None if fd.default == "$USER" else fd.default
    return {
        "name": fd.name,
        "label": fd.display_label,
        "type": fd.type,
        "soapType": _SOAP_TYPES.get(fd.type, "xsd:string"),
        "length": fd.max_length if textual else 0,
        "byteLength": fd.max_length * 3 if textual else 0,
        "digits": 9 if fd.type == "int" else 0,
        "precision": 18 if fd.type in ("currency", "double") else (
            3 if fd.type == "percent" else 0),
        "scale": 2 if fd.type == "currency" else 0,
        "nillable": fd.nillable,
        "createable": fd.createable,
        "updateable": fd.updateable,
        "defaultedOnCreate": fd.defaulted,
        "defaultValue": default if fd.type not in TEXT_TYPES or fd.picklist else None,
        "externalId": fd.external_id,
        "idLookup": fd.id_lookup,
        "unique": fd.unique,
        "caseSensitive": False,
        "custom": fd.custom,
        "calculated": fd.calculated,
        "nameField": fd.name_field,
        "autoNumber": fd.auto_number,
        "filterable": True,
        "sortable": fd.type not in ("textarea", "multipicklist"),
        "groupable": fd.type not in ("textarea", "multipicklist") and
        fd.type not in NUMBER_TYPES,
        "referenceTo": list(fd.reference_to),
        "relationshipName": fd.relationship_name,
        "relationshipOrder": None,
        "polymorphicForeignKey": fd.polymorphic,
        "cascadeDelete": False,
        "restrictedPicklist": fd.restricted,
        "picklistValues": [{"active": True, "defaultValue": v == fd.default, "label": v,
                            "validFor": None, "value": v} for v in fd.picklist],
        "dependentPicklist": False,
        "htmlFormatted": False,
        "inlineHelpText": None,
        "deprecatedAndHidden": False,
    }


def describe_sobject(sobj: SObjectDef, version: str) -> dict[str, Any]:
    children: list[dict[str, Any]] = [{"childSObject": child, "field": fd.name,
                 "relationshipName": fd.child_relationship, "cascadeDelete": fd.cascade_delete,
                 "restrictedDelete": False, "deprecatedAndHidden": False,
                 "junctionIdListNames": [], "junctionReferenceTo": []}
                for child, fd in sobj.child_relationships()]
    return {
        **sobject_basic(sobj, version),
        "fields": [_field(f) for f in sobj.fields],
        "childRelationships": children,
        "recordTypeInfos": [],
        "supportedScopes": [{"label": "All", "name": "everything"}],
    }
