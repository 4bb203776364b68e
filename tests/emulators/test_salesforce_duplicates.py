"""Standard Lead/Contact duplicate rules on Email, through unmodified simple-salesforce."""

from __future__ import annotations

from typing import Any

import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

from tests.emulators.conftest import Emulator

ALLOW_SAVE = {"Sforce-Duplicate-Rule-Header": "allowSave=true"}


def duplicate_error(exc: Any) -> dict[str, Any]:
    assert exc.value.status == 400
    [error] = exc.value.content
    assert error["errorCode"] == "DUPLICATES_DETECTED"
    assert error["message"] == "Use one of these records?"
    return dict(error)


def matched_ids(error: dict[str, Any]) -> dict[str, list[str]]:
    return {m["entityType"]: [r["record"]["Id"] for r in m["matchRecords"]]
            for m in error["duplicateResut"]["matchResults"]}


def test_creating_a_contact_with_a_known_email_is_refused(emulator: Emulator,
                                                          sf: Salesforce) -> None:
    first = sf.Contact.create({"LastName": "Ng", "Email": "ada@acme.com"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Contact.create({"LastName": "Other", "Email": "ADA@Acme.com"})
    error = duplicate_error(exc)
    result = error["duplicateResut"]  # sic: the key Salesforce actually sends
    assert result["allowSave"] is False
    assert result["duplicateRule"] == "Standard_Contact_Duplicate_Rule"
    assert result["duplicateRuleEntityType"] == "Contact"
    [match] = result["matchResults"]
    assert (match["entityType"], match["rule"], match["size"]) == (
        "Contact", "Standard_Contact_Match_Rule_v1_1", 1)
    assert match["matchRecords"][0]["record"] == {
        "attributes": {"type": "Contact", "url": f"/services/data/v59.0/sobjects/Contact/{first}"},
        "Id": first}
    assert [r["Email"] for r in emulator.rows("Contact")] == ["ada@acme.com"]


def test_leads_and_contacts_match_each_other(emulator: Emulator, sf: Salesforce) -> None:
    lead = sf.Lead.create({"LastName": "Ng", "Company": "Acme", "Email": "lead@acme.com"})["id"]
    contact = sf.Contact.create({"LastName": "Ng", "Email": "contact@acme.com"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Contact.create({"LastName": "Ng", "Email": "lead@acme.com"})
    assert matched_ids(duplicate_error(exc)) == {"Lead": [lead]}
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Lead.create({"LastName": "Ng", "Company": "Acme", "Email": "contact@acme.com"})
    error = duplicate_error(exc)
    assert error["duplicateResut"]["duplicateRule"] == "Standard_Lead_Duplicate_Rule"
    assert matched_ids(error) == {"Contact": [contact]}
    # Changing an email into a duplicate is refused too; unrelated edits are fine.
    other = sf.Contact.create({"LastName": "Other", "Email": "other@acme.com"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Contact.update(other, {"Email": "Contact@acme.com"})
    duplicate_error(exc)
    assert sf.Contact.update(contact, {"Title": "CEO", "Email": "CONTACT@acme.com"}) == 204
    # Details on request.
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Contact.create({"LastName": "Ng", "Email": "other@acme.com"}, headers={
            "Sforce-Duplicate-Rule-Header": "allowSave=false; includeRecordDetails=true"})
    record = duplicate_error(exc)["duplicateResut"]["matchResults"][0]["matchRecords"][0]
    assert record["record"]["Email"] == "other@acme.com"


def test_allow_save_header_and_config_switch(emulator: Emulator, sf: Salesforce) -> None:
    sf.Contact.create({"LastName": "Ng", "Email": "ada@acme.com"})
    assert sf.Contact.create({"LastName": "Ng", "Email": "ada@acme.com"},
                             headers=ALLOW_SAVE)["success"]
    emulator.admin("POST", "config", {"duplicate_rules": False})
    assert sf.Lead.create({"LastName": "Ng", "Company": "A", "Email": "ada@acme.com"})["success"]
    emulator.admin("POST", "config", {"duplicate_rules": True})
    with pytest.raises(SalesforceMalformedRequest):
        sf.Lead.create({"LastName": "Ng", "Company": "A", "Email": "ada@acme.com"})
    # Admin seeding never runs duplicate rules (tests seed duplicates on purpose).
    emulator.seed({"Contact": [{"LastName": "Seeded", "Email": "ada@acme.com"}]})
    assert len(emulator.rows("Contact")) == 3
    bad = emulator.session.post(f"{emulator.base_url}/__admin/config",
                                json={"duplicate_rules": "maybe"})
    assert bad.status_code == 400


def test_collection_items_carry_the_error_without_details(emulator: Emulator,
                                                          sf: Salesforce) -> None:
    sf.Contact.create({"LastName": "Ng", "Email": "ada@acme.com"})
    records = [{"attributes": {"type": "Contact"}, "LastName": "A", "Email": "ada@acme.com"},
               {"attributes": {"type": "Contact"}, "LastName": "B", "Email": "bob@acme.com"},
               {"attributes": {"type": "Lead"}, "LastName": "C", "Company": "X",
                "Email": "bob@acme.com"}]
    result = sf.restful("composite/sobjects", method="POST",
                        json={"allOrNone": False, "records": records})
    assert result[0] == {"success": False, "errors": [{
        "statusCode": "DUPLICATES_DETECTED", "message": "Use one of these records?",
        "fields": []}]}
    # Records saved earlier in the same request count as existing records.
    assert result[1]["success"] is True and result[2]["success"] is False
    allowed = sf.restful("composite/sobjects", method="POST", headers=ALLOW_SAVE,
                         json={"allOrNone": False, "records": records})
    assert [r["success"] for r in allowed] == [True, True, True]


def test_composite_subrequests_see_details_and_their_own_headers(emulator: Emulator,
                                                                 sf: Salesforce) -> None:
    sf.Contact.create({"LastName": "Ng", "Email": "ada@acme.com"})
    body = {"compositeRequest": [
        {"method": "POST", "url": "/services/data/v59.0/sobjects/Contact", "referenceId": "dup",
         "body": {"LastName": "A", "Email": "ada@acme.com"}},
        {"method": "POST", "url": "/services/data/v59.0/sobjects/Contact", "referenceId": "ok",
         "body": {"LastName": "B", "Email": "ada@acme.com"}, "httpHeaders": ALLOW_SAVE}]}
    answers = sf.restful("composite", method="POST", json=body)["compositeResponse"]
    assert answers[0]["httpStatusCode"] == 400
    assert answers[0]["body"][0]["errorCode"] == "DUPLICATES_DETECTED"
    assert "duplicateResut" in answers[0]["body"][0]
    assert answers[1]["httpStatusCode"] == 201
