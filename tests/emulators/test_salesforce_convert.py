"""Lead conversion through the invocable-action resource, via simple-salesforce ``restful``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest, SalesforceResourceNotFound

from tests.emulators.conftest import Emulator

STANDARD = "actions/standard/convertLead"
CUSTOM = "actions/custom/apex/ConvertLead"


def convert(sf: Salesforce, inputs: list[dict[str, Any]], path: str = STANDARD,
            **kwargs: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = sf.restful(path, method="POST", json={"inputs": inputs},
                                              **kwargs)
    return result


def new_lead(sf: Salesforce, **fields: Any) -> str:
    body = {"FirstName": "Ada", "LastName": "Ng", "Company": "Acme", "Email": "ada@acme.com",
            "Phone": "555-0100", **fields}
    lead_id: str = sf.Lead.create(body)["id"]
    return lead_id


def test_conversion_creates_account_contact_opportunity(emulator: Emulator,
                                                        sf: Salesforce) -> None:
    lead_id = new_lead(sf)
    task_id = sf.Task.create({"Subject": "Call", "WhoId": lead_id})["id"]
    before = sf.Lead.get(lead_id)
    subscriber = emulator.subscriber()
    position = subscriber.tip()
    calls = emulator.stats()["api_calls"]

    [result] = convert(sf, [{"leadId": lead_id}])
    assert emulator.stats()["api_calls"] == calls + 1
    assert (result["actionName"], result["isSuccess"], result["errors"]) == (
        "convertLead", True, None)
    out = result["outputValues"]
    assert out["leadId"] == lead_id
    assert (out["accountId"][:3], out["contactId"][:3], out["opportunityId"][:3]) == (
        "001", "003", "006")

    lead = sf.Lead.get(lead_id)
    today = dt.datetime.now(dt.UTC).date()
    assert lead["IsConverted"] is True and lead["Status"] == "Closed - Converted"
    assert lead["ConvertedDate"] == today.isoformat()
    assert (lead["ConvertedAccountId"], lead["ConvertedContactId"],
            lead["ConvertedOpportunityId"]) == (out["accountId"], out["contactId"],
                                                out["opportunityId"])
    assert lead["LastModifiedDate"] == before["LastModifiedDate"]
    assert lead["SystemModstamp"] > before["SystemModstamp"]
    account = sf.Account.get(out["accountId"])
    assert (account["Name"], account["Phone"]) == ("Acme", "555-0100")
    contact = sf.Contact.get(out["contactId"])
    assert (contact["Name"], contact["Email"], contact["AccountId"]) == (
        "Ada Ng", "ada@acme.com", out["accountId"])
    opportunity = sf.Opportunity.get(out["opportunityId"])
    assert (opportunity["Name"], opportunity["StageName"], opportunity["AccountId"]) == (
        "Acme", "Prospecting", out["accountId"])
    assert dt.date.fromisoformat(opportunity["CloseDate"]).month % 3 == 0
    task = sf.Task.get(task_id)
    assert (task["WhoId"], task["WhatId"]) == (out["contactId"], out["opportunityId"])
    # Afterwards the lead is read-only but still queryable.
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Lead.update(lead_id, {"Phone": "1"})
    assert exc.value.content[0]["errorCode"] == "CANNOT_UPDATE_CONVERTED_LEAD"
    assert sf.query("SELECT Id FROM Lead WHERE IsConverted = true")["totalSize"] == 1

    # One transaction: Account, Contact, Opportunity CREATE, then the Lead UPDATE (fact sheet
    # §7.3), then the moved activity.
    events = subscriber.events(replay_id=position)
    heads = [e["payload"]["ChangeEventHeader"] for e in events]
    assert [(h["entityName"], h["changeType"], h["sequenceNumber"]) for h in heads] == [
        ("Account", "CREATE", 1), ("Contact", "CREATE", 2), ("Opportunity", "CREATE", 3),
        ("Lead", "UPDATE", 4), ("Task", "UPDATE", 5)]
    assert len({h["transactionKey"] for h in heads}) == 1
    assert heads[3]["changedFields"] == ["Status", "IsConverted", "ConvertedDate",
                                         "ConvertedAccountId", "ConvertedContactId",
                                         "ConvertedOpportunityId"]  # no LastModifiedDate
    lead_event = events[3]["payload"]
    assert lead_event["IsConverted"] is True and lead_event["Email"] is None
    assert lead_event["ConvertedContactId"] == out["contactId"]
    assert lead_event["ConvertedDate"] == (today - dt.date(1970, 1, 1)).days


def test_conversion_merges_into_existing_records(emulator: Emulator, sf: Salesforce) -> None:
    account_id = sf.Account.create({"Name": "Existing"})["id"]
    contact_id = sf.Contact.create({"FirstName": "Keep", "LastName": "Existing",
                                    "AccountId": account_id})["id"]
    lead_id = new_lead(sf)
    subscriber = emulator.subscriber()
    position = subscriber.tip()
    [result] = convert(sf, [{"leadId": lead_id, "accountId": account_id,
                             "contactId": contact_id, "doNotCreateOpportunity": True}],
                       path=CUSTOM)
    assert result["actionName"] == "ConvertLead" and result["isSuccess"]
    assert result["outputValues"] == {"leadId": lead_id, "accountId": account_id,
                                      "contactId": contact_id, "opportunityId": None}
    contact = sf.Contact.get(contact_id)
    # Only empty fields are filled; the lead's own email does not count as a duplicate.
    assert (contact["FirstName"], contact["LastName"]) == ("Keep", "Existing")
    assert (contact["Email"], contact["Phone"]) == ("ada@acme.com", "555-0100")
    assert sf.Account.get(account_id)["Phone"] == "555-0100"
    assert sf.Lead.get(lead_id)["ConvertedOpportunityId"] is None
    heads = [e["payload"]["ChangeEventHeader"] for e in subscriber.events(replay_id=position)]
    assert [(h["entityName"], h["changeType"]) for h in heads] == [
        ("Account", "UPDATE"), ("Contact", "UPDATE"), ("Lead", "UPDATE")]


def test_conversion_errors(emulator: Emulator, sf: Salesforce) -> None:
    first, second = new_lead(sf), new_lead(sf, Email="bob@acme.com")
    results = convert(sf, [{"leadId": first}, {"leadId": first}, {"leadId": second,
                                                                   "convertedStatus": "Open"}])
    assert [r["isSuccess"] for r in results] == [True, False, False]  # HTTP 200: one worked
    assert results[1]["errors"] == [{"statusCode": "CANNOT_UPDATE_CONVERTED_LEAD",
                                     "message": "cannot reference converted lead",
                                     "fields": ["leadId"]}]
    assert results[2]["errors"][0]["statusCode"] == "INVALID_STATUS"
    assert results[1]["outputValues"] is None
    assert sf.Lead.get(second)["IsConverted"] is False  # its savepoint rolled back

    with pytest.raises(SalesforceMalformedRequest) as exc:  # nothing succeeded: HTTP 400
        convert(sf, [{}, {"leadId": second, "contactId": "003Fe0000000zzzAAA"},
                     {"leadId": "00QFe0000000zzzAAA"}, {"leadId": second, "nope": 1}])
    codes = [r["errors"][0]["statusCode"] for r in exc.value.content]
    assert codes == ["REQUIRED_FIELD_MISSING", "REQUIRED_FIELD_MISSING",
                     "INVALID_CROSS_REFERENCE_KEY", "INVALID_INPUT"]
    with pytest.raises(SalesforceMalformedRequest):
        sf.restful(STANDARD, method="POST", json={"inputs": [{"leadId": second}] * 101})
    with pytest.raises(SalesforceResourceNotFound):
        sf.restful("actions/standard/deleteEverything", method="POST", json={"inputs": []})
    assert sf.restful("actions")["standard"] == "/services/data/v59.0/actions/standard"
    assert sf.restful("actions/standard")["actions"][0]["name"] == "convertLead"


def test_duplicate_rules_apply_to_the_new_contact(emulator: Emulator, sf: Salesforce) -> None:
    lead_id = new_lead(sf)
    sf.Contact.create({"LastName": "Twin", "Email": "ada@acme.com"},
                      headers={"Sforce-Duplicate-Rule-Header": "allowSave=true"})
    with pytest.raises(SalesforceMalformedRequest) as exc:
        convert(sf, [{"leadId": lead_id}])
    assert exc.value.content[0]["errors"][0]["statusCode"] == "DUPLICATES_DETECTED"
    assert [r["Name"] for r in emulator.rows("Account")] == []  # rolled back
    [result] = convert(sf, [{"leadId": lead_id}],
                       headers={"Sforce-Duplicate-Rule-Header": "allowSave=true"})
    assert result["isSuccess"]
