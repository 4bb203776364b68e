"""Standard duplicate rules for Lead and Contact (fact sheet §0.5, §5.3).

Emulated rule: saving a Lead or Contact whose Email equals (case-insensitively) the Email of
another live Contact or unconverted Lead fails with DUPLICATES_DETECTED — on create, and on
update when the Email changes. The rules behave like Salesforce's standard *alert* rules: the
``Sforce-Duplicate-Rule-Header: allowSave=true`` request header lets the save through.
Single-record errors carry the match details under the misspelled ``duplicateResut`` key;
collection items carry only ``{statusCode, message, fields}``. Switch the rules off with
``POST /__admin/config {"duplicate_rules": false}``. Admin seeding never runs them.
"""

from __future__ import annotations

from typing import Any

from emulators.salesforce._errors import SfError

__all__ = ["DUPLICATE_TYPES", "duplicates_error", "find_duplicates", "header_options"]

DUPLICATE_TYPES = frozenset({"Contact", "Lead"})
MESSAGE = "Use one of these records?"
_DUPLICATE_RULE = {"Contact": "Standard_Contact_Duplicate_Rule",
                   "Lead": "Standard_Lead_Duplicate_Rule"}
_MATCH_RULE = {"Contact": "Standard_Contact_Match_Rule_v1_1",
               "Lead": "Standard_Lead_Match_Rule_v1_0"}


def header_options(value: str | None) -> dict[str, str]:
    """``allowSave=true; includeRecordDetails=false`` -> {"allowsave": "true", ...}.

    Salesforce option headers separate pairs with ``;`` (and ``,`` in Sforce-Call-Options);
    names are matched case-insensitively here.
    """
    out: dict[str, str] = {}
    for part in (value or "").replace(",", ";").split(";"):
        key, sep, val = part.partition("=")
        if sep:
            out[key.strip().lower()] = val.strip()
    return out


def find_duplicates(state: Any, email: str, exclude: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """(type, record) of live Contacts and unconverted Leads with this email."""
    wanted = email.lower()
    found: list[tuple[str, dict[str, Any]]] = []
    for type_name in ("Contact", "Lead"):
        for record in state.live(type_name):
            if record["Id"] in exclude or str(record.get("Email") or "").lower() != wanted:
                continue
            if type_name == "Lead" and record.get("IsConverted"):
                continue
            found.append((type_name, record))
    return found


def duplicates_error(entity: str, version: str, matches: list[tuple[str, dict[str, Any]]],
                     include_details: bool) -> SfError:
    """The DUPLICATES_DETECTED error, with ``duplicateResut`` (sic) match details."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    # Matches of the saved object's own type come first, as the standard rules list them.
    ordered = sorted(matches, key=lambda m: m[0] != entity)
    for type_name, record in ordered:
        row: dict[str, Any] = {"attributes": {
            "type": type_name,
            "url": f"/services/data/v{version}/sobjects/{type_name}/{record['Id']}"},
            "Id": record["Id"]}
        if include_details:
            row |= {"Name": record.get("Name"), "Email": record.get("Email")}
        by_type.setdefault(type_name, []).append({
            "additionalInformation": [],
            "fieldDiffs": [{"difference": "SAME", "name": "Email"}] if include_details else [],
            "matchConfidence": 100.0,
            "record": row,
        })
    result = {
        "allowSave": False,
        "duplicateRule": _DUPLICATE_RULE[entity],
        "duplicateRuleEntityType": entity,
        "errorMessage": MESSAGE,
        "matchResults": [{"entityType": type_name, "errors": [], "matchEngine": "FuzzyMatchEngine",
                          "matchRecords": rows, "rule": _MATCH_RULE[type_name],
                          "size": len(rows), "success": True}
                         for type_name, rows in by_type.items()],
    }
    return SfError(400, "DUPLICATES_DETECTED", MESSAGE, extra={"duplicateResut": result})
