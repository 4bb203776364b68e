"""Fault injection through ``/__admin/faults``, observed through unmodified simple-salesforce."""

from __future__ import annotations

import ssl
import threading
import time
from typing import Any

import httpx
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
    assert emulator.session.get(f"{emulator.base_url}/services/data/v59.0/limits").status_code == 503
    resp = emulator.session.delete(f"{emulator.base_url}/__admin/faults/f1")
    assert resp.status_code == 200 and [r["id"] for r in rules(emulator)] == ["f2"]
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0
    assert emulator.admin("DELETE", "faults") == {"deleted": 1}
    add_fault(emulator, fault="outage")
    emulator.admin("POST", "reset")  # reset clears rules too
    assert rules(emulator) == []


def collection_upsert(*message_ids: str) -> dict[str, Any]:
    return {"allOrNone": False, "records": [
        {"attributes": {"type": "Task"}, "Front_Message_Id__c": m, "Subject": m}
        for m in message_ids]}


def test_latency_before_drops_a_request_whose_client_left(emulator: Emulator,
                                                          sf: Salesforce) -> None:
    """A client killed while its upsert is held must leave no write behind: the chaos test
    kills the sink there and relies on it (a request that never got past the load
    balancer). The next identical request is served normally."""
    add_fault(emulator, match={"method": "PATCH", "path_regex": r"/composite/sobjects/Task/"},
              fault="latency", ms=800, times=1)
    token = emulator.token()
    url = f"{token['instance_url']}/services/data/v59.0/composite/sobjects/Task/Front_Message_Id__c"
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    with httpx.Client(verify=ssl.create_default_context(cafile=str(emulator.ca)),
                      trust_env=False, timeout=httpx.Timeout(5.0, read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.patch(url, json=collection_upsert("msg_gone"), headers=headers)
    # The client hung up after 0.2 s; the rule holds the request 0.8 s and then drops it.
    deadline = time.monotonic() + 5
    while rules(emulator)[0]["dropped"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    [state] = rules(emulator)
    assert (state["matched"], state["applied"], state["dropped"]) == (1, 1, 1)
    assert state["phase"] == "before"
    time.sleep(0.2)  # nothing may still be on its way to the handler
    assert emulator.rows("Task") == []
    assert "collections_upsert" not in emulator.stats()["by_kind"]  # never charged
    result = sf.restful("composite/sobjects/Task/Front_Message_Id__c", method="PATCH",
                        json=collection_upsert("msg_gone"))
    assert [(r["success"], r["created"]) for r in result] == [(True, True)]
    assert [r["Front_Message_Id__c"] for r in emulator.rows("Task")] == ["msg_gone"]


def test_latency_before_serves_a_client_that_waits_with_its_full_body(
        emulator: Emulator, sf: Salesforce) -> None:
    """The body read while the request is held is handed to the handler intact."""
    add_fault(emulator, match={"method": "PATCH"}, fault="latency", ms=300, times=1)
    ids = [f"msg_{i:03d}_{'x' * 200}" for i in range(150)]  # a body of many TCP segments
    started = time.monotonic()
    result = sf.restful("composite/sobjects/Task/Front_Message_Id__c", method="PATCH",
                        json=collection_upsert(*ids))
    assert time.monotonic() - started >= 0.3
    assert all(r["success"] and r["created"] for r in result) and len(result) == 150
    assert rules(emulator)[0]["dropped"] == 0
    assert len(emulator.rows("Task")) == 150


def test_latency_after_applies_the_write_then_holds_the_answer(emulator: Emulator,
                                                               sf: Salesforce) -> None:
    """``"phase": "after"``: the records exist while the client still waits for the answer,
    the moment between a write and the offset commit that the chaos test kills in."""
    add_fault(emulator, match={"method": "PATCH", "path_regex": r"/composite/sobjects/Task/"},
              fault="latency", ms=1000, phase="after", times=1)
    answer: list[Any] = []

    def call() -> None:
        answer.append(sf.restful("composite/sobjects/Task/Front_Message_Id__c", method="PATCH",
                                 json=collection_upsert("msg_a", "msg_b")))

    started = time.monotonic()
    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while len(emulator.rows("Task")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    seen_at = time.monotonic() - started
    assert sorted(r["Front_Message_Id__c"] for r in emulator.rows("Task")) == ["msg_a", "msg_b"]
    assert caller.is_alive() and not answer  # written, not yet answered
    caller.join(5)
    assert time.monotonic() - started >= 1.0 > seen_at
    assert [r["created"] for r in answer[0]] == [True, True]
    [state] = rules(emulator)
    assert (state["phase"], state["applied"], state["dropped"]) == ("after", 1, 0)


def test_latency_after_keeps_the_write_when_the_client_leaves(emulator: Emulator) -> None:
    add_fault(emulator, match={"method": "PATCH"}, fault="latency", ms=600, phase="after")
    token = emulator.token()
    url = f"{token['instance_url']}/services/data/v59.0/composite/sobjects/Task/Front_Message_Id__c"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(emulator.ca)),
                      trust_env=False, timeout=httpx.Timeout(5.0, read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.patch(url, json=collection_upsert("msg_kept"),
                         headers={"Authorization": f"Bearer {token['access_token']}"})
    assert [r["Front_Message_Id__c"] for r in emulator.rows("Task")] == ["msg_kept"]
    assert rules(emulator)[0]["dropped"] == 0


def test_phase_is_validated(emulator: Emulator) -> None:
    for bad in [{"fault": "latency", "ms": 10, "phase": "during"},
                {"fault": "outage", "phase": "after"}]:
        resp = emulator.session.post(f"{emulator.base_url}/__admin/faults", json=bad)
        assert resp.status_code == 400, bad
    assert "phase" not in add_fault(emulator, fault="outage", ms=5)


def test_enforce_unique_off_lets_a_double_write_show_as_two_rows(emulator: Emulator,
                                                                 sf: Salesforce) -> None:
    """The chaos test turns uniqueness off so that a sink writing twice is seen, not
    silently refused by the org."""
    assert emulator.admin("GET", "config")["enforce_unique"] is True
    sf.Task.create({"Subject": "one", "Front_Message_Id__c": "msg_1"})
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Task.create({"Subject": "two", "Front_Message_Id__c": "msg_1"})
    assert exc.value.content[0]["errorCode"] == "DUPLICATE_VALUE"

    assert emulator.admin("POST", "config", {"enforce_unique": False})["enforce_unique"] is False
    sf.Task.create({"Subject": "two", "Front_Message_Id__c": "msg_1"})
    assert sorted(r["Subject"] for r in emulator.rows("Task")) == ["one", "two"]
    # A test switch, not a schema change: a sink checking the field's describe still starts.
    [described] = [f for f in sf.Task.describe()["fields"] if f["name"] == "Front_Message_Id__c"]
    assert described["unique"] is True and described["externalId"] is True
    # An upsert on the repeated value is ambiguous, as in an org without the Unique flag.
    result = sf.restful("composite/sobjects/Task/Front_Message_Id__c", method="PATCH",
                        json=collection_upsert("msg_1"))
    assert [e["statusCode"] for e in result[0]["errors"]] == ["MULTIPLE_CHOICES"]
    # Standard unique fields stay unique.
    user = {"Username": "a@example.com", "LastName": "A", "Alias": "a", "Email": "a@example.com"}
    emulator.seed({"User": [user]})
    resp = emulator.session.post(f"{emulator.base_url}/__admin/seed",
                                 json={"records": {"User": [user]}})
    assert resp.status_code == 400 and resp.json()[0]["errorCode"] == "DUPLICATE_VALUE"

    resp = emulator.session.post(f"{emulator.base_url}/__admin/config",
                                 json={"enforce_unique": "sometimes"})
    assert resp.status_code == 400
    emulator.admin("POST", "config", {"enforce_unique": True})
    with pytest.raises(SalesforceMalformedRequest):
        sf.Task.create({"Subject": "three", "Front_Message_Id__c": "msg_1"})
