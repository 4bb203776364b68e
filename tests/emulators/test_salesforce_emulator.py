"""The Salesforce emulator driven by the unmodified simple-salesforce 1.12.10 client.

Every test talks HTTPS to a real uvicorn server through the project CA, the way the sink does.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from emulators.salesforce import canonical_id, checksum, to18
from tests.emulators.conftest import Emulator

SF_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000$")
# Well-formed ids (valid checksums) of records that do not exist.
MISSING_CONTACT = to18("003Fe0000000zzz")
MISSING_ACCOUNT = to18("001Fe0000000zzz")


def error_code(exc: Any) -> str:
    return str(exc.value.content[0]["errorCode"])


# ------------------------------------------------------------------ record ids
@pytest.mark.parametrize(("id15", "suffix"), [
    ("0015000000VALDt", "AAP"),   # from the brief
    ("001D000000IRFma", "IAH"),   # fact sheet §8.1 worked example
    ("001A0000006Vm9r", "IAC"),
    ("00300000000abcd", "AAA"),   # no upper-case letters at all
    ("ABCDEABCDEABCDE", "555"),   # every position upper-case -> 31 -> '5'
])
def test_checksum_matches_known_ids(id15: str, suffix: str) -> None:
    assert checksum(id15) == suffix
    assert to18(id15) == id15 + suffix


def test_18_char_ids_are_case_insensitive_and_validated() -> None:
    # The suffix records the case, so a lower-cased 18-char id still names the same record.
    assert canonical_id("0015000000valdtaap") == "0015000000VALDtAAP"
    assert canonical_id("0015000000VALDt") == "0015000000VALDtAAP"
    # A suffix claiming an upper-case digit is impossible.
    assert canonical_id("0015000000VALDt5AA") is None
    assert canonical_id("not-an-id") is None
    assert canonical_id("0015000000VALD") is None


def test_created_ids_have_prefix_and_valid_checksum(sf: Salesforce) -> None:
    prefixes = {"Account": "001", "Contact": "003", "Lead": "00Q", "Task": "00T",
                "Case": "500"}
    bodies = {"Account": {"Name": "Acme"}, "Contact": {"LastName": "Ng"},
              "Lead": {"LastName": "Ng", "Company": "Acme"}, "Task": {}, "Case": {}}
    for type_name, prefix in prefixes.items():
        new_id = getattr(sf, type_name).create(bodies[type_name])["id"]
        assert len(new_id) == 18 and new_id.startswith(prefix)
        assert to18(new_id[:15]) == new_id


# ------------------------------------------------------------------ CRUD
def test_crud_roundtrip(emulator: Emulator, sf: Salesforce) -> None:
    integration_user = emulator.token()["id"].rsplit("/", 1)[1]
    account_id = sf.Account.create({"Name": "Acme", "Website": "acme.com"})["id"]
    created = sf.Contact.create({"FirstName": "Ada", "LastName": "Ng", "Email": "ada@acme.com",
                                 "AccountId": account_id})
    assert created["success"] is True and created["errors"] == []
    contact_id = created["id"]

    row = sf.Contact.get(contact_id)
    assert row["attributes"] == {"type": "Contact",
                                 "url": f"/services/data/v59.0/sobjects/Contact/{contact_id}"}
    assert row["Name"] == "Ada Ng"  # read-only compound, maintained by the server
    assert row["Phone"] is None  # every field present, nulls included
    assert row["IsDeleted"] is False
    assert row["OwnerId"] == row["CreatedById"] == row["LastModifiedById"] == integration_user
    for stamp in ("CreatedDate", "LastModifiedDate", "SystemModstamp"):
        assert SF_DATETIME.match(row[stamp]), row[stamp]

    # 15-char form and ?fields= selection
    narrow = sf.Contact.get(contact_id[:15], params={"fields": "Email,AccountId"})
    assert set(narrow) == {"attributes", "Email", "AccountId"}
    assert narrow["AccountId"] == account_id

    assert sf.Contact.update(contact_id, {"Phone": "555-0100", "FirstName": None}) == 204
    updated = sf.Contact.get(contact_id)
    assert updated["Phone"] == "555-0100"
    assert updated["FirstName"] is None and updated["Name"] == "Ng"
    assert updated["SystemModstamp"] >= row["SystemModstamp"]
    assert updated["CreatedDate"] == row["CreatedDate"]

    assert sf.Contact.delete(contact_id) == 204
    with pytest.raises(SalesforceResourceNotFound) as exc:
        sf.Contact.get(contact_id)
    assert error_code(exc) == "ENTITY_IS_DELETED"
    with pytest.raises(SalesforceResourceNotFound) as exc:
        sf.Contact.delete(contact_id)
    assert error_code(exc) == "ENTITY_IS_DELETED"


def test_unknown_record_and_type(sf: Salesforce) -> None:
    with pytest.raises(SalesforceResourceNotFound) as exc:
        sf.Contact.get(MISSING_CONTACT)
    assert error_code(exc) == "NOT_FOUND"
    with pytest.raises(SalesforceResourceNotFound):
        sf.Widget__c.create({"Name": "x"})
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Contact.get(MISSING_ACCOUNT)  # an Account id on the Contact resource
    assert error_code(exc) == "MALFORMED_ID"


def test_defaults_and_required_fields(emulator: Emulator, sf: Salesforce) -> None:
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Contact.create({"FirstName": "Ada"})
    assert exc.value.content[0] == {"message": "Required fields are missing: [LastName]",
                                    "errorCode": "REQUIRED_FIELD_MISSING",
                                    "fields": ["LastName"]}
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Lead.create({"Email": "x@y.com"})
    assert exc.value.content[0]["fields"] == ["LastName", "Company"]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Account.create({"Website": "acme.com"})
    assert exc.value.content[0]["fields"] == ["Name"]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Opportunity.create({"Name": "Deal"})
    assert exc.value.content[0]["fields"] == ["StageName", "CloseDate"]

    lead = sf.Lead.get(sf.Lead.create({"LastName": "Ng", "Company": "Acme"})["id"])
    assert lead["Status"] == "Open - Not Contacted" and lead["IsConverted"] is False
    task = sf.Task.get(sf.Task.create({})["id"])
    assert (task["Status"], task["Priority"], task["IsClosed"]) == ("Not Started", "Normal",
                                                                    False)
    assert task["OwnerId"] == emulator.state.integration_user_id
    # Clearing a required field on update is refused too.
    contact_id = sf.Contact.create({"LastName": "Ng"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Contact.update(contact_id, {"LastName": None})
    assert error_code(exc) == "REQUIRED_FIELD_MISSING"


def test_field_validation_errors(sf: Salesforce) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("Contact", {"LastName": "Ng", "Shoe_Size__c": 9}, "INVALID_FIELD"),
        ("Contact", {"LastName": "Ng", "Name": "x"}, "INVALID_FIELD_FOR_INSERT_UPDATE"),
        ("Contact", {"LastName": "Ng", "Email": "not-an-email"}, "INVALID_EMAIL_ADDRESS"),
        ("Contact", {"LastName": "x" * 81}, "STRING_TOO_LONG"),
        ("Contact", {"LastName": "Ng", "AccountId": "bogus"}, "MALFORMED_ID"),
        ("Contact", {"LastName": "Ng", "AccountId": MISSING_CONTACT}, "MALFORMED_ID"),
        ("Contact", {"LastName": "Ng", "AccountId": MISSING_ACCOUNT},
         "INVALID_CROSS_REFERENCE_KEY"),
        ("Lead", {"LastName": "Ng", "Company": "A", "Status": "Nope"},
         "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
        ("Contact", {"LastName": "Ng", "HasOptedOutOfEmail": {"a": 1}}, "JSON_PARSER_ERROR"),
    ]
    for type_name, body, code in cases:
        with pytest.raises(SalesforceMalformedRequest) as exc:
            getattr(sf, type_name).create(body)
        assert error_code(exc) == code, (body, exc.value.content)
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.restful("sobjects/Contact/", method="POST", data="{not json")
    assert error_code(exc) == "JSON_PARSER_ERROR"


def test_derived_and_cascading_behaviour(emulator: Emulator, sf: Salesforce) -> None:
    account_id = sf.Account.create({"Name": "Acme"})["id"]
    contact_id = sf.Contact.create({"LastName": "Ng", "AccountId": account_id})["id"]
    case_id = sf.Case.create({"Subject": "Help", "ContactId": contact_id,
                              "AccountId": account_id})["id"]
    case = sf.Case.get(case_id)
    assert case["Status"] == "New" and case["IsClosed"] is False and case["CaseNumber"]
    sf.Case.update(case_id, {"Status": "Closed"})
    assert sf.Case.get(case_id)["IsClosed"] is True
    opp = sf.Opportunity.get(sf.Opportunity.create(
        {"Name": "Deal", "StageName": "Closed Won", "CloseDate": "2024-06-30",
         "AccountId": account_id})["id"])
    assert (opp["IsClosed"], opp["IsWon"], opp["Probability"]) == (True, True, 100)
    task_id = sf.Task.create({"Subject": "Call", "WhoId": contact_id})["id"]
    assert sf.Task.get(task_id)["AccountId"] == account_id  # derived from the Who contact

    # Deleting the account takes its contacts, cases, opportunities and their tasks along.
    sf.Account.delete(account_id)
    deleted = {r["Id"] for t in ("Contact", "Case", "Opportunity", "Task")
               for r in emulator.rows(t) if r["IsDeleted"]}
    assert {contact_id, case_id, opp["Id"], task_id} <= deleted


# ------------------------------------------------------------------ upsert
def test_upsert_by_external_id_201_then_200(emulator: Emulator, sf: Salesforce) -> None:
    assert sf.Task.upsert("Front_Message_Id__c/msg_1", {"Subject": "Email: hi"}) == 201
    assert sf.Task.upsert("Front_Message_Id__c/msg_1", {"Subject": "Email: hi again"}) == 200
    rows = [r for r in emulator.rows("Task") if r["Front_Message_Id__c"] == "msg_1"]
    assert len(rows) == 1 and rows[0]["Subject"] == "Email: hi again"

    raw = sf.Task.upsert("Front_Message_Id__c/msg_2", {"Subject": "a"}, raw_response=True)
    assert raw.status_code == 201
    first = raw.json()
    assert first["created"] is True and first["success"] is True and first["errors"] == []
    # External-id matching is case-insensitive; the update answers 200 with created=false.
    raw = sf.Task.upsert("Front_Message_Id__c/MSG_2", {"Subject": "b"}, raw_response=True)
    assert raw.status_code == 200
    assert raw.json() == {"id": first["id"], "success": True, "errors": [], "created": False}

    by_ext = sf.Task.get_by_custom_id("Front_Message_Id__c", "msg_2")
    assert by_ext["Id"] == first["id"] and by_ext["Subject"] == "b"
    # Values needing URL encoding round-trip (get_by_custom_id uses quote_plus).
    assert sf.Task.upsert("Front_Message_Id__c/a%20b%2Fc", {"Subject": "enc"}) == 201
    assert sf.Task.get_by_custom_id("Front_Message_Id__c", "a b/c")["Subject"] == "enc"

    with pytest.raises(SalesforceResourceNotFound):
        sf.Task.upsert("Subject/whatever", {"Priority": "High"})  # not an external id
    # A plain create that collides with a unique external id is DUPLICATE_VALUE.
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Task.create({"Front_Message_Id__c": "MSG_1"})
    assert error_code(exc) == "DUPLICATE_VALUE"
    assert first["id"] not in exc.value.content[0]["message"]


def test_upsert_on_old_api_version_answers_204(emulator: Emulator) -> None:
    old = emulator.client(version="45.0")
    assert old.Case.upsert("Front_Conversation_Id__c/cnv_1", {"Subject": "x"}) == 201
    assert old.Case.upsert("Front_Conversation_Id__c/cnv_1", {"Subject": "y"}) == 204


# ------------------------------------------------------------------ describe
def test_describe(sf: Salesforce) -> None:
    glob = sf.describe()
    assert glob["maxBatchSize"] == 200
    prefixes = {o["name"]: o["keyPrefix"] for o in glob["sobjects"]}
    assert prefixes["Lead"] == "00Q" and prefixes["FeedItem"] == "0D5"

    contact = sf.Contact.describe()
    fields = {f["name"]: f for f in contact["fields"]}
    assert contact["keyPrefix"] == "003"
    assert fields["Email"]["type"] == "email" and fields["Email"]["idLookup"] is True
    last = fields["LastName"]
    assert (last["nillable"], last["createable"], last["defaultedOnCreate"]) == (
        False, True, False)
    assert fields["AccountId"]["referenceTo"] == ["Account"]
    assert fields["AccountId"]["relationshipName"] == "Account"

    task_fields = {f["name"]: f for f in sf.Task.describe()["fields"]}
    ext = task_fields["Front_Message_Id__c"]
    assert (ext["externalId"], ext["unique"], ext["custom"]) == (True, True, True)
    assert task_fields["WhoId"]["referenceTo"] == ["Contact", "Lead"]
    assert task_fields["TaskSubtype"]["updateable"] is False
    status = task_fields["Status"]
    assert status["defaultedOnCreate"] and any(
        p["value"] == "Not Started" and p["defaultValue"] for p in status["picklistValues"])

    account = sf.Account.describe()
    children = {(c["childSObject"], c["relationshipName"]) for c in account["childRelationships"]}
    assert ("Contact", "Contacts") in children
    assert {f["name"] for f in account["fields"]} >= {"ARR__c", "Tier__c", "AnnualRevenue"}
    assert sf.Lead.metadata()["objectDescribe"]["keyPrefix"] == "00Q"


def test_versions_and_resources(emulator: Emulator, sf: Salesforce) -> None:
    versions = emulator.session.get(f"{emulator.base_url}/services/data/").json()
    assert {"label": "Winter '24", "url": "/services/data/v59.0", "version": "59.0"} in versions
    assert sf.restful("")["query"] == "/services/data/v59.0/query"
    # Any vNN.N works.
    assert emulator.client(version="62.0").Contact.create({"LastName": "X"})["success"]


# ------------------------------------------------------------------ replication
def test_get_updated_and_deleted(emulator: Emulator, sf: Salesforce) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    kept = sf.Contact.create({"LastName": "Kept"})["id"]
    gone = sf.Contact.create({"LastName": "Gone"})["id"]
    sf.Contact.delete(gone)
    # The current minute is never covered: move the org clock past it.
    emulator.admin("POST", "config", {"clock_offset": 120})
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=3)
    updated = sf.Contact.updated(start, end)
    assert kept in updated["ids"] and gone not in updated["ids"]
    assert SF_DATETIME.match(updated["latestDateCovered"])
    deleted = sf.Contact.deleted(start, end)
    assert [d["id"] for d in deleted["deletedRecords"]] == [gone]
    assert SF_DATETIME.match(deleted["deletedRecords"][0]["deletedDate"])


# ------------------------------------------------------------------ collections & composite
def test_collection_create_reports_item_failures_with_http_200(emulator: Emulator,
                                                                sf: Salesforce) -> None:
    records = [{"attributes": {"type": "Contact"}, "LastName": "One"},
               {"attributes": {"type": "Contact"}, "FirstName": "NoLastName"},
               {"attributes": {"type": "Lead"}, "LastName": "Three", "Company": "Acme"}]
    before = emulator.stats()["api_calls"]
    result = sf.restful("composite/sobjects", method="POST",
                        json={"allOrNone": False, "records": records})
    assert emulator.stats()["api_calls"] == before + 1  # one call for the whole collection
    assert [r["success"] for r in result] == [True, False, True]
    assert "id" not in result[1]
    assert result[1]["errors"] == [{"statusCode": "REQUIRED_FIELD_MISSING",
                                    "message": "Required fields are missing: [LastName]",
                                    "fields": ["LastName"]}]
    assert result[0]["id"].startswith("003") and result[2]["id"].startswith("00Q")

    rolled = sf.restful("composite/sobjects", method="POST",
                        json={"allOrNone": True, "records": records})
    assert [r["success"] for r in rolled] == [False, False, False]
    assert rolled[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert rolled[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert len(emulator.rows("Contact")) == 1 and len(emulator.rows("Lead")) == 1

    too_many = [{"attributes": {"type": "Task"}, "Subject": str(i)} for i in range(201)]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.restful("composite/sobjects", method="POST", json={"records": too_many})
    assert error_code(exc) == "EXCEEDED_ID_LIMIT"


def test_collection_upsert_update_delete(emulator: Emulator, sf: Salesforce) -> None:
    contact_id = sf.Contact.create({"LastName": "Ng"})["id"]
    sf.Task.upsert("Front_Message_Id__c/msg_1", {"Subject": "old"})

    def task(ext: str, **fields: Any) -> dict[str, Any]:
        return {"attributes": {"type": "Task"}, "Front_Message_Id__c": ext, **fields}

    result = sf.restful("composite/sobjects/Task/Front_Message_Id__c", method="PATCH", json={
        "allOrNone": False,
        "records": [task("msg_1", Subject="new"), task("msg_2", WhoId=contact_id),
                    task("msg_3", WhoId=MISSING_CONTACT),
                    task("dup", Subject="a"), task("DUP", Subject="b")]})
    assert [(r["success"], r.get("created")) for r in result[:2]] == [(True, False),
                                                                     (True, True)]
    assert result[2]["errors"][0]["statusCode"] == "INVALID_CROSS_REFERENCE_KEY"
    # The same key twice in one request fails for both items.
    assert not result[3]["success"] and not result[4]["success"]
    subjects = {r["Front_Message_Id__c"]: r["Subject"] for r in emulator.rows("Task")}
    assert subjects == {"msg_1": "new", "msg_2": None}

    ids = [r["id"] for r in result[:2]]
    updated = sf.restful("composite/sobjects", method="PATCH", json={"records": [
        {"attributes": {"type": "Task"}, "id": ids[0], "Status": "Completed"},
        {"attributes": {"type": "Task"}, "id": ids[1], "Status": "Bogus"}]})
    assert updated[0] == {"id": ids[0], "success": True, "errors": []}
    assert updated[1]["id"] == ids[1] and not updated[1]["success"]
    assert sf.Task.get(ids[0])["IsClosed"] is True

    deleted = sf.restful("composite/sobjects", method="DELETE",
                         params={"ids": f"{ids[0]},{ids[1]},{MISSING_CONTACT}"})
    assert [d["success"] for d in deleted] == [True, True, False]
    assert {r["Id"] for r in emulator.rows("Task") if r["IsDeleted"]} == set(ids)


def test_composite_references_and_all_or_none(emulator: Emulator, sf: Salesforce) -> None:
    before = emulator.stats()["api_calls"]
    body = {"allOrNone": False, "compositeRequest": [
        {"method": "POST", "url": "/services/data/v59.0/sobjects/Account", "referenceId": "acct",
         "body": {"Name": "Acme"}},
        {"method": "POST", "url": "/services/data/v59.0/sobjects/Contact", "referenceId": "ct",
         "body": {"LastName": "Ng", "AccountId": "@{acct.id}"}},
        {"method": "GET", "url": "/services/data/v59.0/sobjects/Contact/@{ct.id}?fields=Id,Name",
         "referenceId": "read"},
        {"method": "GET", "url": "/services/data/v59.0/query/?q=SELECT+Id+FROM+Account",
         "referenceId": "q"}]}
    answers = sf.restful("composite", method="POST", json=body)["compositeResponse"]
    assert emulator.stats()["api_calls"] == before + 1
    assert [a["httpStatusCode"] for a in answers] == [201, 201, 200, 200]
    account_id = answers[0]["body"]["id"]
    assert answers[0]["httpHeaders"]["Location"].endswith(account_id)
    assert answers[2]["body"]["Name"] == "Ng"
    assert answers[3]["body"]["records"][0]["Id"] == account_id
    assert sf.Contact.get(answers[1]["body"]["id"])["AccountId"] == account_id

    failing = {"allOrNone": True, "compositeRequest": [
        {"method": "POST", "url": "/services/data/v59.0/sobjects/Account", "referenceId": "a",
         "body": {"Name": "Rolled back"}},
        {"method": "POST", "url": "/services/data/v59.0/sobjects/Contact", "referenceId": "c",
         "body": {"FirstName": "NoLast", "AccountId": "@{a.id}"}}]}
    answers = sf.restful("composite", method="POST", json=failing)["compositeResponse"]
    assert answers[0]["httpStatusCode"] == 400
    assert answers[0]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert answers[1]["body"][0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert [r["Name"] for r in emulator.rows("Account")] == ["Acme"]

    with pytest.raises(SalesforceMalformedRequest):
        sf.restful("composite", method="POST", json={"compositeRequest": [
            {"method": "GET", "url": "/services/data/v59.0/limits", "referenceId": f"r{i}"}
            for i in range(26)]})
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.restful("composite", method="POST", json={"compositeRequest": [
            {"method": "GET", "url": "/services/data/v59.0/limits"}]})
    assert error_code(exc) == "JSON_PARSER_ERROR"


# ------------------------------------------------------------------ limits & sessions
def test_usage_header_and_limits(emulator: Emulator, sf: Salesforce) -> None:
    sf.query("SELECT Id FROM Contact")
    used = emulator.stats()["api_usage"]["used"]
    usage = sf.api_usage["api-usage"]
    assert (usage.used, usage.total) == (used, 15000)
    resp = emulator.session.get(f"{emulator.base_url}/services/data/")
    assert resp.headers["Sforce-Limit-Info"].startswith("api-usage=")
    limits = sf.limits()
    assert limits["DailyApiRequests"] == {"Max": 15000, "Remaining": 15000 - used}


def test_spent_allocation_is_403_request_limit_exceeded(emulator: Emulator,
                                                        sf: Salesforce) -> None:
    emulator.admin("POST", "config", {"daily_limit": 3})
    for _ in range(3):
        sf.Contact.create({"LastName": "Ng"})
    with pytest.raises(SalesforceRefusedRequest) as exc:
        sf.Contact.create({"LastName": "Refused"})
    assert exc.value.status == 403
    assert exc.value.content == [{"message": "TotalRequests Limit exceeded.",
                                  "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert [r["LastName"] for r in emulator.rows("Contact")] == ["Ng"] * 3
    assert emulator.stats()["refused"] == 1
    # Logging in does not count and still works; /limits shows the empty allocation.
    assert sf.limits()["DailyApiRequests"] == {"Max": 3, "Remaining": 0}
    emulator.token()
    # The window is a rolling 24 h: once it has passed, calls are accepted again.
    # (The old session idled out meanwhile, so log in again.)
    emulator.admin("POST", "config", {"clock_offset": 24 * 3600 + 120})
    assert emulator.client().Contact.create({"LastName": "Tomorrow"})["success"]


def test_invalid_and_expired_sessions(emulator: Emulator) -> None:
    bogus = Salesforce(session_id="00Dxx!nope", instance_url=emulator.base_url,
                       session=emulator.session, version="59.0")
    with pytest.raises(SalesforceExpiredSession) as exc:
        bogus.query("SELECT Id FROM Contact")
    assert exc.value.content == [{"message": "Session expired or invalid",
                                  "errorCode": "INVALID_SESSION_ID"}]

    token = emulator.token()
    sf = emulator.client(token=token)
    sf.Contact.create({"LastName": "Ok"})
    # Idle timeout: the session dies after inactivity, not at a fixed expiry.
    emulator.admin("POST", "config", {"session_timeout": 60, "clock_offset": 61})
    with pytest.raises(SalesforceExpiredSession):
        sf.Contact.create({"LastName": "Late"})
    fresh = emulator.client()
    fresh.Contact.create({"LastName": "Fresh"})
    assert emulator.admin("POST", "sessions/expire")["expired"] >= 1
    with pytest.raises(SalesforceExpiredSession):
        fresh.Contact.create({"LastName": "Revoked"})
    assert emulator.stats()["unauthorized"] == 3


def test_composite_batch_costs_one_call_per_subrequest(emulator: Emulator,
                                                       sf: Salesforce) -> None:
    contact_id = sf.Contact.create({"LastName": "Ng"})["id"]
    before = emulator.stats()["api_calls"]
    result = sf.restful("composite/batch", method="POST", json={"haltOnError": True,
                                                                  "batchRequests": [
        {"method": "PATCH", "url": f"v59.0/sobjects/Contact/{contact_id}",
         "richInput": {"Phone": "555"}},
        {"method": "POST", "url": "v59.0/sobjects/Contact", "richInput": {"FirstName": "x"}},
        {"method": "GET", "url": "v59.0/query/?q=SELECT+Id+FROM+Contact"}]})
    assert emulator.stats()["api_calls"] == before + 3
    assert result["hasErrors"] is True
    assert [r["statusCode"] for r in result["results"]] == [204, 400, 412]
    assert result["results"][0]["result"] is None
    assert sf.Contact.get(contact_id)["Phone"] == "555"  # no rollback in batch


def test_collection_retrieve(sf: Salesforce) -> None:
    first = sf.Contact.create({"LastName": "One", "Email": "one@x.com"})["id"]
    rows = sf.restful("composite/sobjects/Contact",
                      params={"ids": f"{first},{MISSING_CONTACT}", "fields": "Id,Email"})
    assert rows[0]["Email"] == "one@x.com" and set(rows[0]) == {"attributes", "Id", "Email"}
    assert rows[1] is None


def test_lookup_owner_and_lead_rules(emulator: Emulator, sf: Salesforce) -> None:
    seeded = emulator.seed({
        "User": [{"Email": "gone@acme.com", "LastName": "Gone", "IsActive": False}],
        "Lead": [{"LastName": "Old", "Company": "Acme", "IsConverted": True,
                  "Status": "Closed - Converted"}]})
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Task.create({"Subject": "x", "OwnerId": seeded["User"][0]})
    assert error_code(exc) == "INACTIVE_OWNER_OR_USER"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Lead.update(seeded["Lead"][0], {"Phone": "1"})
    assert error_code(exc) == "CANNOT_UPDATE_CONVERTED_LEAD"
    # Still visible to SOQL.
    converted = sf.query("SELECT Id FROM Lead WHERE IsConverted = true")
    assert [r["Id"] for r in converted["records"]] == seeded["Lead"]


def test_get_by_non_unique_lookup_field_can_be_ambiguous(sf: Salesforce) -> None:
    one = sf.Contact.create({"LastName": "A", "Email": "same@x.com"})["id"]
    assert sf.Contact.get_by_custom_id("Email", "SAME@x.com")["Id"] == one
    # The standard duplicate rule would refuse the second one; allowSave lets it through.
    two = sf.Contact.create({"LastName": "B", "Email": "same@x.com"},
                            headers={"Sforce-Duplicate-Rule-Header": "allowSave=true"})["id"]
    with pytest.raises(SalesforceMoreThanOneRecord) as exc:
        sf.Contact.get_by_custom_id("Email", "same@x.com")
    assert exc.value.status == 300
    assert sorted(exc.value.content) == sorted(
        f"/services/data/v59.0/sobjects/Contact/{i}" for i in (one, two))
