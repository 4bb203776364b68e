"""Lead conversion over REST, in the invocable-action envelope (fact sheet §9).

Salesforce converts leads through Apex ``Database.convertLead`` or SOAP ``convertLead()``; a
standard REST action for it is unconfirmed (§9). A REST client therefore calls an invocable
action — in a real org an Apex ``@InvocableMethod`` class deployed for the purpose — through
the documented invocable-actions resource. The emulator answers both spellings:

    POST /services/data/vXX.X/actions/standard/convertLead
    POST /services/data/vXX.X/actions/custom/apex/ConvertLead

Request (one input per lead, at most 100; names mirror SOAP ``LeadConvert``):
    {"inputs": [{"leadId": "00Q…",                      required
                 "convertedStatus": "Closed - Converted",  default: the converted LeadStatus
                 "accountId": "001…",                   merge into this Account
                 "contactId": "003…",                   merge into this Contact (needs accountId)
                 "ownerId": "005…",                     owner of new records (default lead owner)
                 "doNotCreateOpportunity": false,
                 "opportunityName": "…",                default: the lead's Company
                 "overwriteLeadSource": false, "sendNotificationEmail": false}]}   (accepted)
Response: one result per input, HTTP 200 if any input succeeded, else 400 (same body):
    [{"actionName": "convertLead", "isSuccess": true, "errors": null,
      "outputValues": {"leadId": "00Q…", "accountId": "001…", "contactId": "003…",
                       "opportunityId": "006…" | null}},
     {"actionName": "convertLead", "isSuccess": false, "outputValues": null,
      "errors": [{"statusCode": "CANNOT_UPDATE_CONVERTED_LEAD", "message": "…", "fields": []}]}]

Semantics: the request is one transaction (one transactionKey in the change events); each input
converts in its own savepoint (Database.convertLead(list, false)). A conversion creates the
Account (Name = Company, Phone) unless ``accountId`` is given, the Contact (names, Email, phones,
AccountId) unless ``contactId`` is given, and an Opportunity (StageName "Prospecting", CloseDate
= end of the current quarter) unless ``doNotCreateOpportunity``; merging only fills empty fields.
The lead gets IsConverted, Status, ConvertedDate, Converted{Account,Contact,Opportunity}Id and a
new SystemModstamp — its LastModifiedDate is kept, so its UPDATE event lists no LastModifiedDate
(fact sheet §7.3). Open tasks on the lead move to the contact (WhatId = the opportunity, else the
account, when empty). Change events come in that order: Account CREATE, Contact CREATE,
Opportunity CREATE, Lead UPDATE, Task UPDATEs. Duplicate rules ignore the converted lead itself
but a *different* Contact/Lead with the same email blocks the new Contact (DUPLICATES_DETECTED)
unless the request sends ``Sforce-Duplicate-Rule-Header: allowSave=true``.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import replace
from typing import Any

from emulators.salesforce._cdc import Change
from emulators.salesforce._errors import SfError, not_found
from emulators.salesforce._schema import LEAD_STATUSES
from emulators.salesforce._timefmt import format_datetime
from emulators.salesforce._types import Reply, SubRequest
from emulators.salesforce._writes import Ctx, check_lock, create, find_record, update

__all__ = ["ACTION_NAMES", "h_actions", "h_convert_lead", "h_custom_actions",
           "h_standard_actions"]

# Path spelling -> actionName reported in results.
ACTION_NAMES = {("standard", "convertlead"): "convertLead",
                ("custom", "apex", "convertlead"): "ConvertLead"}
MAX_INPUTS = 100
CONVERTED_STATUSES = ("Closed - Converted",)
_INPUT_KEYS = frozenset({"leadId", "convertedStatus", "accountId", "contactId", "ownerId",
                         "doNotCreateOpportunity", "opportunityName", "overwriteLeadSource",
                         "sendNotificationEmail"})
_CONTACT_FROM_LEAD = ("FirstName", "LastName", "Email", "Phone", "MobilePhone")
assert all(s in LEAD_STATUSES for s in CONVERTED_STATUSES)


def h_actions(ctx: Ctx, sub: SubRequest) -> Reply:
    base = f"/services/data/v{ctx.version}/actions"
    return Reply(200, {"standard": f"{base}/standard", "custom": f"{base}/custom"})


def h_standard_actions(ctx: Ctx, sub: SubRequest) -> Reply:
    url = f"/services/data/v{ctx.version}/actions/standard/convertLead"
    return Reply(200, {"actions": [{"label": "Convert Lead", "name": "convertLead",
                                    "type": "CONVERTLEAD", "url": url}]})


def h_custom_actions(ctx: Ctx, sub: SubRequest) -> Reply:
    base = f"/services/data/v{ctx.version}/actions/custom"
    return Reply(200, {"apex": f"{base}/apex"})


def action_name(segments: list[str]) -> str | None:
    return ACTION_NAMES.get(tuple(s.lower() for s in segments[1:]))


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


def _quarter_end(day: dt.date) -> str:
    month = ((day.month - 1) // 3 + 1) * 3
    return dt.date(day.year, month, calendar.monthrange(day.year, month)[1]).isoformat()


def _required(name: str) -> SfError:
    return SfError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{name}]",
                   [name])


def _bad_reference(name: str, value: Any) -> SfError:
    return SfError(400, "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {value}",
                   [name])


def _merge(ctx: Ctx, type_name: str, record: dict[str, Any], values: dict[str, Any]) -> None:
    """Fill only the empty fields of an existing record (SOAP convertLead merge rule)."""
    fills = {k: v for k, v in values.items() if v is not None and record.get(k) is None}
    if fills:
        update(ctx, type_name, record["Id"], fills)


def _convert_one(ctx: Ctx, params: Any) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise SfError(400, "INVALID_INPUT", "Each input must be a JSON object", [])
    unknown = sorted(set(params) - _INPUT_KEYS)
    if unknown:
        raise SfError(400, "INVALID_INPUT", f"Unknown input parameters: {unknown}", unknown)
    raw_lead = params.get("leadId")
    if not raw_lead:
        raise _required("leadId")
    found = find_record(ctx, raw_lead, type_="Lead")
    if found is None:
        raise _bad_reference("leadId", raw_lead)
    lead = found[1]
    if lead["IsConverted"]:
        raise SfError(400, "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead",
                      ["leadId"])
    wanted_status = str(params.get("convertedStatus") or CONVERTED_STATUSES[0])
    status = next((s for s in CONVERTED_STATUSES if s.lower() == wanted_status.lower()), None)
    if status is None:
        raise SfError(400, "INVALID_STATUS", f"invalid convertedStatus: {wanted_status}",
                      ["convertedStatus"])
    check_lock(ctx, "Lead", lead["Id"])
    state = ctx.state
    owner = params.get("ownerId") or lead["OwnerId"]
    work = replace(ctx, duplicate_exempt=ctx.duplicate_exempt | {lead["Id"]})

    raw_account, raw_contact = params.get("accountId"), params.get("contactId")
    if raw_contact and not raw_account:
        raise _required("accountId")
    if raw_account:
        account_found = find_record(ctx, raw_account, type_="Account")
        if account_found is None:
            raise _bad_reference("accountId", raw_account)
        account_id = str(account_found[1]["Id"])
        _merge(work, "Account", account_found[1], {"Phone": lead["Phone"]})
    else:
        account_id = create(work, "Account", {"Name": lead["Company"], "Phone": lead["Phone"],
                                              "OwnerId": owner}, status=400)

    person = {k: lead[k] for k in _CONTACT_FROM_LEAD if lead[k] is not None}
    if raw_contact:
        contact_found = find_record(ctx, raw_contact, type_="Contact")
        if contact_found is None:
            raise _bad_reference("contactId", raw_contact)
        contact = contact_found[1]
        if contact["AccountId"] not in (None, account_id):
            raise SfError(400, "FIELD_INTEGRITY_EXCEPTION", "The contact must belong to the "
                          "account the lead is converted into", ["contactId"])
        contact_id = str(contact["Id"])
        _merge(work, "Contact", contact, {**person, "AccountId": account_id})
    else:
        contact_id = create(work, "Contact", {**person, "AccountId": account_id,
                                              "OwnerId": owner}, status=400)

    opportunity_id = None
    if not _flag(params.get("doNotCreateOpportunity")):
        opportunity_id = create(work, "Opportunity", {
            "Name": params.get("opportunityName") or lead["Company"],
            "StageName": "Prospecting", "CloseDate": _quarter_end(state.now().date()),
            "AccountId": account_id, "OwnerId": owner}, status=400)

    stamp = state.now()
    converted = {**lead, "IsConverted": True, "Status": status,
                 "ConvertedDate": stamp.date().isoformat(), "ConvertedAccountId": account_id,
                 "ConvertedContactId": contact_id, "ConvertedOpportunityId": opportunity_id,
                 "SystemModstamp": format_datetime(stamp)}
    state.put("Lead", converted)
    state.capture(Change("Lead", lead["Id"], "UPDATE", lead, converted, ctx.user_id,
                         ctx.change_origin()))

    for task in state.live("Task"):
        if task["WhoId"] == lead["Id"]:
            moves: dict[str, Any] = {"WhoId": contact_id}
            if task["WhatId"] is None:
                moves["WhatId"] = opportunity_id or account_id
            update(work, "Task", task["Id"], moves)
    return {"leadId": lead["Id"], "accountId": account_id, "contactId": contact_id,
            "opportunityId": opportunity_id}


def h_convert_lead(ctx: Ctx, sub: SubRequest) -> Reply:
    name = action_name(sub.segments)
    if name is None:
        raise not_found()
    body = sub.body
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise SfError(400, "JSON_PARSER_ERROR", "Missing or invalid 'inputs' in the request body")
    inputs = body["inputs"]
    if not inputs:
        raise SfError(400, "INVALID_INPUT", "At least one input is required")
    if len(inputs) > MAX_INPUTS:
        raise SfError(400, "LIMIT_EXCEEDED", f"Maximum number of inputs is {MAX_INPUTS}")
    state = ctx.state
    results: list[dict[str, Any]] = []
    for params in inputs:
        savepoint = state.begin()
        try:
            outputs = _convert_one(ctx, params)
            results.append({"actionName": name, "errors": None, "isSuccess": True,
                            "outputValues": outputs})
        except SfError as err:
            state.rollback(savepoint)
            results.append({"actionName": name, "errors": [err.item_error()],
                            "isSuccess": False, "outputValues": None})
        finally:
            state.end()
    status = 200 if any(r["isSuccess"] for r in results) else 400
    return Reply(status, results)
