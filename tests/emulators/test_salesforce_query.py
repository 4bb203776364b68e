"""SOQL through simple-salesforce: filters, relationships, ordering, paging, queryAll."""

from __future__ import annotations

from typing import Any

import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceMalformedRequest

from tests.emulators.conftest import Emulator


@pytest.fixture
def org(emulator: Emulator) -> dict[str, list[str]]:
    """Two accounts, five contacts (one without account), one lead, tasks on Who/What."""
    return emulator.seed({
        "Account": [{"Name": "Acme", "Website": "acme.com", "AnnualRevenue": 5e6},
                    {"Name": "Globex", "Website": "globex.example", "AnnualRevenue": 1e6}],
        "Contact": [
            {"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@acme.com",
             "AccountId": "@Account[0]"},
            {"FirstName": "Bob", "LastName": "Vance", "Email": "Bob.Vance@Acme.com",
             "AccountId": "@Account[0]"},
            {"FirstName": "Chen", "LastName": "Wei", "Email": "chen@globex.example",
             "AccountId": "@Account[1]"},
            {"FirstName": "Dana", "LastName": "Scully", "Email": "dana_s@fbi.gov"},
            {"FirstName": "Emeka", "LastName": "Okafor", "Email": None},
        ],
        "Lead": [{"LastName": "Haddad", "Company": "Initech", "Email": "f@initech.io"}],
        "Task": [{"Subject": "Call Ada", "WhoId": "@Contact[0]", "WhatId": "@Account[0]"},
                 {"Subject": "Email lead", "WhoId": "@Lead[0]"}],
    })


def ids(result: dict[str, Any]) -> list[str]:
    return [r["Id"] for r in result["records"]]


def test_text_equality_is_case_insensitive(sf: Salesforce, org: dict[str, list[str]]) -> None:
    result = sf.query("SELECT Id, Email FROM Contact WHERE Email = 'BOB.VANCE@acme.COM'")
    assert ids(result) == [org["Contact"][1]]
    # The stored value comes back as stored, not as queried.
    assert result["records"][0]["Email"] == "Bob.Vance@Acme.com"
    # Only the selected fields (plus attributes) are returned.
    assert set(result["records"][0]) == {"attributes", "Id", "Email"}


def test_relationship_fields_nest_with_attributes(sf: Salesforce,
                                                  org: dict[str, list[str]]) -> None:
    result = sf.query("SELECT Id, Account.Name, Account.Owner.Email FROM Contact "
                      "WHERE LastName IN ('Lovelace', 'Scully') ORDER BY LastName")
    ada, dana = result["records"]
    assert ada["Account"]["attributes"]["type"] == "Account"
    assert ada["Account"]["attributes"]["url"].endswith(org["Account"][0])
    assert ada["Account"]["Name"] == "Acme"
    assert ada["Account"]["Owner"]["Email"] == "integration@frontforce.emulator"
    assert dana["Account"] is None  # a null lookup nulls the whole branch
    # Filtering on a parent field.
    by_parent = sf.query("SELECT Id FROM Contact WHERE Account.Website = 'globex.example'")
    assert ids(by_parent) == [org["Contact"][2]]


def test_polymorphic_who_and_what(sf: Salesforce, org: dict[str, list[str]]) -> None:
    result = sf.query("SELECT Subject, Who.Name, Who.Type, What.Name FROM Task "
                      "ORDER BY Subject")
    call, email = result["records"]
    assert call["Who"]["attributes"]["type"] == "Contact" and call["Who"]["Name"] == "Ada Lovelace"
    assert call["What"]["Name"] == "Acme"
    assert email["Who"]["Type"] == "Lead" and email["What"] is None
    leads = sf.query("SELECT Id FROM Task WHERE Who.Type = 'Lead'")
    assert len(leads["records"]) == 1
    # What.Name on an object without a Name field is its name field (Case -> CaseNumber).
    case_id = sf.Case.create({"Subject": "Broken"})["id"]
    sf.Task.create({"Subject": "On case", "WhatId": case_id})
    on_case = sf.query("SELECT What.Name FROM Task WHERE What.Type = 'Case'")["records"]
    assert [r["What"]["Name"] for r in on_case] == [sf.Case.get(case_id)["CaseNumber"]]


def test_like_in_null_and_boolean_logic(sf: Salesforce, org: dict[str, list[str]]) -> None:
    c = org["Contact"]
    assert set(ids(sf.query("SELECT Id FROM Contact WHERE Email LIKE '%@ACME.com'"))) == {
        c[0], c[1]}
    # '_' matches exactly one character; '\\_' is a literal underscore.
    assert ids(sf.query("SELECT Id FROM Contact WHERE FirstName LIKE 'D_n_'")) == [c[3]]
    assert ids(sf.query("SELECT Id FROM Contact WHERE Email LIKE 'dana\\_%'")) == [c[3]]
    assert ids(sf.query("SELECT Id FROM Contact WHERE Email LIKE 'ada\\_%'")) == []
    assert set(ids(sf.query("SELECT Id FROM Contact WHERE LastName IN ('wei', 'SCULLY')"))) \
        == {c[2], c[3]}
    assert ids(sf.query("SELECT Id FROM Contact WHERE Email = null")) == [c[4]]
    assert set(ids(sf.query("SELECT Id FROM Contact WHERE AccountId = null"))) == {c[3], c[4]}
    both = sf.query("SELECT Id FROM Contact WHERE (AccountId = null OR LastName = 'Wei') "
                    "AND NOT Email LIKE '%fbi%'")
    assert set(ids(both)) == {c[2], c[4]}
    # Ids compare in 15- or 18-char form.
    assert ids(sf.query(f"SELECT Id FROM Contact WHERE Id = '{c[0][:15]}'")) == [c[0]]
    assert ids(sf.query("SELECT Id FROM Account WHERE AnnualRevenue > 2000000")) == [
        org["Account"][0]]
    assert len(sf.query("SELECT Id FROM Lead WHERE IsConverted = false")["records"]) == 1


def test_datetime_literals(sf: Salesforce, org: dict[str, list[str]]) -> None:
    everything = sf.query("SELECT Id FROM Contact WHERE CreatedDate >= 2000-01-01T00:00:00Z")
    assert len(everything["records"]) == 5
    future = sf.query("SELECT Id FROM Contact WHERE SystemModstamp > 2999-01-01T00:00:00.000+00:00")
    assert future["records"] == []
    assert len(sf.query("SELECT Id FROM Contact WHERE CreatedDate = TODAY")["records"]) == 5
    assert sf.query("SELECT Id FROM Contact WHERE CreatedDate < LAST_N_DAYS:3")["records"] == []
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query("SELECT Id FROM Contact WHERE CreatedDate > '2024-01-01T00:00:00Z'")
    assert exc.value.content[0]["errorCode"] == "INVALID_FIELD"


def test_order_by_limit_offset(sf: Salesforce, org: dict[str, list[str]]) -> None:
    names = [r["LastName"] for r in sf.query(
        "SELECT LastName FROM Contact ORDER BY Account.Name DESC NULLS LAST, LastName ASC"
    )["records"]]
    assert names == ["Wei", "Lovelace", "Vance", "Okafor", "Scully"]
    page = sf.query("SELECT LastName FROM Contact ORDER BY LastName LIMIT 2 OFFSET 1")
    assert [r["LastName"] for r in page["records"]] == ["Okafor", "Scully"]
    assert page["totalSize"] == 2
    nulls_first = sf.query("SELECT Email FROM Contact ORDER BY Email LIMIT 1")
    assert nulls_first["records"][0]["Email"] is None


def test_child_subquery_and_count(sf: Salesforce, org: dict[str, list[str]]) -> None:
    result = sf.query("SELECT Name, (SELECT LastName FROM Contacts ORDER BY LastName) "
                      "FROM Account ORDER BY Name")
    acme, globex = result["records"]
    assert acme["Contacts"]["totalSize"] == 2
    assert [r["LastName"] for r in acme["Contacts"]["records"]] == ["Lovelace", "Vance"]
    assert globex["Contacts"]["records"][0]["LastName"] == "Wei"
    count = sf.query("SELECT COUNT() FROM Contact WHERE AccountId != null")
    assert (count["totalSize"], count["records"]) == (3, [])
    semi = sf.query("SELECT Id FROM Contact WHERE Id IN (SELECT WhoId FROM Task)")
    assert ids(semi) == [org["Contact"][0]]


@pytest.mark.parametrize(("soql", "code"), [
    ("SELECT Id FROM Contact WHERE", "MALFORMED_QUERY"),
    ("SELECT Id FORM Contact", "MALFORMED_QUERY"),
    ("SELECT Id FROM Contact WHERE LastName = 'a' AND Email = 'b' OR Title = 'c'",
     "MALFORMED_QUERY"),
    ("SELECT Id, Id FROM Contact", "MALFORMED_QUERY"),
    ("SELECT Id FROM Contact WHERE Email = 'unterminated", "MALFORMED_QUERY"),
    ("SELECT Shoe_Size__c FROM Contact", "INVALID_FIELD"),
    ("SELECT Id FROM Contact WHERE Email = 5", "INVALID_FIELD"),
    ("SELECT Id FROM Widget__c", "INVALID_TYPE"),
    ("SELECT Id FROM Contact WHERE Id = 'abc'", "INVALID_QUERY_FILTER_OPERATOR"),
])
def test_query_errors(sf: Salesforce, soql: str, code: str) -> None:
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query(soql)
    assert exc.value.status == 400
    assert exc.value.content[0]["errorCode"] == code


def test_pagination_with_locators(emulator: Emulator, sf: Salesforce) -> None:
    emulator.seed({"Contact": [{"LastName": f"P{i:02d}"} for i in range(7)]})
    emulator.admin("POST", "config", {"page_size": 3})
    first = sf.query("SELECT Id, LastName FROM Contact ORDER BY LastName")
    assert (first["totalSize"], first["done"], len(first["records"])) == (7, False, 3)
    assert first["nextRecordsUrl"].startswith("/services/data/v59.0/query/01g")
    assert first["nextRecordsUrl"].endswith("-3")
    second = sf.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    assert second["totalSize"] == 7 and not second["done"]
    assert [r["LastName"] for r in second["records"]] == ["P03", "P04", "P05"]

    before = emulator.stats()["by_kind"]
    everything = sf.query_all("SELECT Id, LastName FROM Contact ORDER BY LastName")
    after = emulator.stats()["by_kind"]
    assert [r["LastName"] for r in everything["records"]] == [f"P{i:02d}" for i in range(7)]
    # Each page is one API call: 1 query + 2 query_more for 7 rows at 3 per page.
    assert after["query"] - before["query"] == 1
    assert after["query_more"] - before.get("query_more", 0) == 2

    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query_more("/services/data/v59.0/query/01gFe0000000000AAA-3", identifier_is_url=True)
    assert exc.value.content[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_query_all_includes_deleted_rows(emulator: Emulator, sf: Salesforce) -> None:
    seeded = emulator.seed({"Contact": [{"LastName": f"Q{i}"} for i in range(5)]})["Contact"]
    sf.Contact.delete(seeded[0])
    emulator.admin("POST", "config", {"page_size": 2})
    live = sf.query_all("SELECT Id FROM Contact")
    assert seeded[0] not in ids(live) and len(live["records"]) == 4
    first = sf.query("SELECT Id, IsDeleted FROM Contact", include_deleted=True)
    assert first["nextRecordsUrl"].startswith("/services/data/v59.0/queryAll/")
    rows = sf.query_all("SELECT Id, IsDeleted FROM Contact", include_deleted=True)["records"]
    assert len(rows) == 5
    assert {r["Id"] for r in rows if r["IsDeleted"]} == {seeded[0]}
    only_deleted = sf.query_all("SELECT Id FROM Contact WHERE IsDeleted = true",
                                include_deleted=True)
    assert ids(only_deleted) == [seeded[0]]


def test_external_id_lookups_answer_as_a_scan(emulator: Emulator, sf: Salesforce) -> None:
    """``F IN (...)`` and ``F = '...'`` on a Unique external id read the index instead of
    every row: the same rows a scan finds, case-insensitively, never a deleted or
    cleared one, and with the rest of the condition still applied."""
    seeded = emulator.seed({"Task": [
        {"Subject": f"T{i}", "Front_Message_Id__c": f"Msg_{i}", "Status": "Completed"}
        for i in range(8)] + [{"Subject": "no key"}]})["Task"]
    sf.Task.delete(seeded[1])
    sf.Task.update(seeded[2], {"Front_Message_Id__c": None})
    sf.Task.update(seeded[3], {"Front_Message_Id__c": "moved"})
    wanted = "('msg_0', 'MSG_1', 'msg_2', 'msg_3', 'Moved', 'msg_4', 'msg_5', 'nothing')"
    found = sf.query_all(f"SELECT Id, Front_Message_Id__c FROM Task WHERE Front_Message_Id__c IN {wanted}")
    # The same condition the index cannot serve (OR with an always-false term): a scan.
    scanned = sf.query_all(f"SELECT Id, Front_Message_Id__c FROM Task WHERE Front_Message_Id__c IN "
                           f"{wanted} OR Subject = 'none such'")
    assert sorted(ids(found)) == sorted(ids(scanned)) == sorted(
        [seeded[0], seeded[3], seeded[4], seeded[5]])
    one = sf.query("SELECT Id FROM Task WHERE Front_Message_Id__c = 'MSG_6'")
    assert ids(one) == [seeded[6]]
    narrowed = sf.query_all(f"SELECT Id FROM Task WHERE Front_Message_Id__c IN {wanted} "
                            "AND Subject != 'T4'")
    assert sorted(ids(narrowed)) == sorted([seeded[0], seeded[3], seeded[5]])
    assert ids(sf.query("SELECT Id FROM Task WHERE Front_Message_Id__c NOT IN ('msg_0') "
                        "AND Subject = 'T7'")) == [seeded[7]]
    assert sf.query("SELECT Id FROM Task WHERE Front_Message_Id__c = 'msg_1'")["totalSize"] == 0
