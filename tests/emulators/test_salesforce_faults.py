"""Fault injection through ``/__admin/faults``, observed through unmodified simple-salesforce."""

from __future__ import annotations

import time
from typing import Any

import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
)

from tests.emulators.conftest import Emulator


def add_fault(emulator: Emulator, **rule: Any) -> dict[str, Any]:
    added: dict[str, Any] = emulator.admin("POST", "faults", rule)["rules"][0]
    return added


def rules(emulator: Emulator) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = emulator.admin("GET", "faults")["rules"]
    return found


def title_update(ids: list[str], title: str) -> dict[str, Any]:
    return {"allOrNone": False, "records": [
        {"attributes": {"type": "Contact"}, "id": i, "Title": title} for i in ids]}


def test_latency_hits_matching_requests_until_times_is_spent(emulator: Emulator,
                                                             sf: Salesforce) -> None:
    ids = [sf.Contact.create({"LastName": f"C{i}"})["id"] for i in range(2)]
    rule = add_fault(emulator, match={"method": "PATCH", "path_regex": "composite/sobjects"},
                     fault="latency", ms=500, times=2)
    assert (rule["id"], rule["applied"], rule["exhausted"]) == ("f1", 0, False)
    timings = []
    for _ in range(3):
        started = time.monotonic()
        sf.restful("composite/sobjects", method="PATCH", json=title_update(ids, "x"))
        timings.append(time.monotonic() - started)
    assert timings[0] >= 0.5 and timings[1] >= 0.5 and timings[2] < timings[0]
    # Same path with another method, and PATCH on another path, do not match.
    sf.restful("composite/sobjects", method="POST",
               json={"records": [{"attributes": {"type": "Contact"}, "LastName": "New"}]})
    sf.Contact.update(ids[0], {"Title": "y"})
    [state] = rules(emulator)
    assert (state["matched"], state["applied"], state["exhausted"]) == (2, 2, True)


def test_outage_is_a_503_that_costs_no_api_call(emulator: Emulator, sf: Salesforce) -> None:
    add_fault(emulator, match={"path_regex": r"/query/?$"}, fault="outage", times=1)
    with pytest.raises(SalesforceGeneralError) as exc:
        sf.query("SELECT Id FROM Contact")
    assert exc.value.status == 503
    assert exc.value.content[0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0  # times=1: over
    stats = emulator.stats()
    assert stats["by_kind"] == {"query": 1} and stats["faults"] == {"outage": 1}

    add_fault(emulator, match={"method": "GET"}, fault="outage", body="html", times=1)
    with pytest.raises(SalesforceGeneralError) as exc:
        sf.query("SELECT Id FROM Contact")
    assert exc.value.status == 503 and "<html>" in exc.value.content  # edge pages are HTML


def test_unable_to_lock_row_fails_each_record_of_a_collection(emulator: Emulator,
                                                              sf: Salesforce) -> None:
    ids = [sf.Contact.create({"LastName": f"C{i}"})["id"] for i in range(3)]
    subscriber = emulator.subscriber()
    position = subscriber.tip()
    add_fault(emulator, match={"method": "PATCH", "path_regex": "composite/sobjects$"},
              fault="unable_to_lock_row", times=1)
    result = sf.restful("composite/sobjects", method="PATCH", json=title_update(ids, "Locked"))
    assert [r["success"] for r in result] == [False] * 3  # still HTTP 200
    assert [r["id"] for r in result] == ids
    assert result[0]["errors"] == [{
        "statusCode": "UNABLE_TO_LOCK_ROW",
        "message": f"unable to obtain exclusive access to this record or 1 records: {ids[0]}",
        "fields": []}]
    assert {r["Title"] for r in emulator.rows("Contact")} == {None}
    assert subscriber.poll(replay_id=position)["events"] == []  # nothing committed
    # The retry goes through.
    assert all(r["success"] for r in sf.restful("composite/sobjects", method="PATCH",
                                                 json=title_update(ids, "Done")))
    assert emulator.stats()["by_kind"]["collections_update"] == 2  # faulted call was charged


def test_unable_to_lock_row_on_single_records_and_by_sobject(emulator: Emulator,
                                                             sf: Salesforce) -> None:
    contact_id = sf.Contact.create({"LastName": "Ng"})["id"]
    add_fault(emulator, match={"method": "PATCH", "path_regex": "/sobjects/Contact/"},
              fault="unable_to_lock_row", times=1)
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Contact.update(contact_id, {"Title": "x"})
    assert exc.value.status == 400
    assert exc.value.content[0]["errorCode"] == "UNABLE_TO_LOCK_ROW"
    assert sf.Contact.update(contact_id, {"Title": "x"}) == 204

    add_fault(emulator, match={"method": "POST", "path_regex": "composite/sobjects$"},
              fault="unable_to_lock_row", sobjects=["Task"])
    result = sf.restful("composite/sobjects", method="POST", json={"records": [
        {"attributes": {"type": "Contact"}, "LastName": "Fine"},
        {"attributes": {"type": "Task"}, "Subject": "Locked", "WhoId": contact_id}]})
    assert [r["success"] for r in result] == [True, False]
    assert result[1]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"


def test_expired_session_drops_the_session(emulator: Emulator, sf: Salesforce) -> None:
    add_fault(emulator, match={"path_regex": "/sobjects/Contact"}, fault="expired_session",
              times=1)
    with pytest.raises(SalesforceExpiredSession) as exc:
        sf.Contact.create({"LastName": "Ng"})
    assert exc.value.content == [{"message": "Session expired or invalid",
                                  "errorCode": "INVALID_SESSION_ID"}]
    with pytest.raises(SalesforceExpiredSession):  # the session really is gone
        sf.query("SELECT Id FROM Contact")
    assert emulator.client().Contact.create({"LastName": "Ng"})["success"]  # log in again


def test_request_limit_every_nth(emulator: Emulator, sf: Salesforce) -> None:
    add_fault(emulator, match={"method": "POST", "path_regex": "/sobjects/Task"},
              fault="request_limit", every_nth=2,
              message="ConcurrentPerOrgLongTxn Limit exceeded.")
    outcomes = []
    for i in range(4):
        try:
            sf.Task.create({"Subject": str(i)})
            outcomes.append("ok")
        except SalesforceRefusedRequest as exc:
            assert exc.status == 403
            assert exc.content == [{"message": "ConcurrentPerOrgLongTxn Limit exceeded.",
                                    "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
            outcomes.append("refused")
    assert outcomes == ["ok", "refused", "ok", "refused"]
    assert sorted(r["Subject"] for r in emulator.rows("Task")) == ["0", "2"]


def test_fault_rules_admin(emulator: Emulator, sf: Salesforce) -> None:
    bad_rules = [{"fault": "gremlins"}, {"fault": "latency"},
                 {"fault": "outage", "match": {"path_regex": "("}},
                 {"fault": "outage", "times": 0}, {"fault": "outage", "colour": "red"},
                 {"fault": "unable_to_lock_row", "sobjects": ["Widget"]}]
    for bad in bad_rules:
        resp = emulator.session.post(f"{emulator.base_url}/__admin/faults", json=bad)
        assert resp.status_code == 400, bad
    # A catch-all outage never touches the admin API, but hits every public path.
    added = emulator.admin("POST", "faults", {"rules": [
        {"fault": "outage", "match": {"path_regex": ".*"}},
        {"fault": "latency", "ms": 10}]})["rules"]
    assert [r["id"] for r in added] == ["f1", "f2"]
    assert emulator.admin("GET", "config")["daily_limit"] == 15000
    token = emulator.session.post(f"{emulator.base_url}/services/oauth2/token",
                                  data={"grant_type": "client_credentials"})
    assert token.status_code == 503
    assert emulator.session.get(f"{emulator.base_url}/__cdc/events").status_code == 503
    resp = emulator.session.delete(f"{emulator.base_url}/__admin/faults/f1")
    assert resp.status_code == 200 and [r["id"] for r in rules(emulator)] == ["f2"]
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0
    assert emulator.admin("DELETE", "faults") == {"deleted": 1}
    add_fault(emulator, fault="outage")
    emulator.admin("POST", "reset")  # reset clears rules too
    assert rules(emulator) == []
