"""Change Data Capture in the Salesforce emulator: writes made through unmodified
simple-salesforce (and the admin API) read back from ``/__cdc/events`` with plain httpx."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import fastavro
import pytest
from simple_salesforce import Salesforce

from emulators.salesforce import OrgState
from emulators.salesforce._writes import Ctx, create, update
from tests.emulators.conftest import Emulator

CONTACTS = "/data/ContactChangeEvent"
HEADER = "ChangeEventHeader"


def header(event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = event["payload"][HEADER]
    return result


def epoch_ms(stamp: str) -> int:
    return int(dt.datetime.fromisoformat(stamp).timestamp() * 1000)


def body_fields(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event["payload"].items() if k != HEADER}


def contact(last: str, **fields: Any) -> dict[str, Any]:
    return {"attributes": {"type": "Contact"}, "LastName": last, **fields}


# ------------------------------------------------------------------ event shape
def test_create_event_carries_every_field(emulator: Emulator, sf: Salesforce) -> None:
    subscriber = emulator.subscriber()
    account_id = sf.Account.create({"Name": "Acme"})["id"]
    contact_id = sf.Contact.create({"FirstName": "Ada", "LastName": "Ng",
                                    "Email": "ada@acme.com", "AccountId": account_id})["id"]
    [event] = subscriber.events(CONTACTS)
    assert event["channel"] == CONTACTS and isinstance(event["replayId"], int)
    head = header(event)
    row = sf.Contact.get(contact_id)
    assert head == {
        "entityName": "Contact", "recordIds": [contact_id], "changeType": "CREATE",
        "changeOrigin": "com/salesforce/api/rest/59.0",
        "transactionKey": head["transactionKey"], "sequenceNumber": 1,
        "commitTimestamp": epoch_ms(row["CreatedDate"]), "commitNumber": head["commitNumber"],
        "commitUser": emulator.state.integration_user_id,
        "nulledFields": [], "diffFields": [], "changedFields": []}
    fields = body_fields(event)
    # Compound Name is nested; Id, IsDeleted and SystemModstamp are not part of the event.
    assert fields["Name"] == {"FirstName": "Ada", "LastName": "Ng"}
    assert not {"FirstName", "LastName", "Id", "IsDeleted", "SystemModstamp"} & set(fields)
    assert fields["Email"] == "ada@acme.com" and fields["AccountId"] == account_id
    assert fields["Phone"] is None and fields["HasOptedOutOfEmail"] is False
    # Datetimes are epoch milliseconds, as Avro-decoded Pub/Sub payloads carry them.
    assert fields["CreatedDate"] == fields["LastModifiedDate"] == epoch_ms(row["CreatedDate"])
    assert fields["OwnerId"] == fields["CreatedById"] == emulator.state.integration_user_id


def test_update_event_carries_only_changed_fields(emulator: Emulator, sf: Salesforce) -> None:
    contact_id = sf.Contact.create({"FirstName": "Ada", "LastName": "Ng", "Phone": "1",
                                    "Title": "Engineer"})["id"]
    subscriber = emulator.subscriber()
    position = subscriber.tip(CONTACTS)
    sf.Contact.update(contact_id, {"Title": "CTO"})
    sf.Contact.update(contact_id, {"Phone": None, "FirstName": "Augusta"},
                      headers={"Sforce-Call-Options": "client=frontforce"})
    first, second = subscriber.events(CONTACTS, position)

    assert header(first)["changeType"] == "UPDATE"
    assert header(first)["changedFields"] == ["Title", "LastModifiedDate"]
    assert header(first)["nulledFields"] == []
    fields = body_fields(first)
    assert fields.pop("Title") == "CTO"
    assert fields.pop("LastModifiedDate") > 0
    assert set(fields.values()) == {None}  # null = unchanged

    assert header(second)["changeOrigin"] == "com/salesforce/api/rest/59.0;client=frontforce"
    assert header(second)["changedFields"] == ["Name.FirstName", "Phone", "LastModifiedDate"]
    assert header(second)["nulledFields"] == ["Phone"]  # null + listed here = cleared
    fields = body_fields(second)
    assert fields["Name"] == {"FirstName": "Augusta", "LastName": None}
    assert fields["Phone"] is None and fields["Title"] is None
    assert fields["LastModifiedDate"] == epoch_ms(sf.Contact.get(contact_id)["LastModifiedDate"])


def test_derived_fields_change_with_their_source(emulator: Emulator, sf: Salesforce) -> None:
    opp_id = sf.Opportunity.create({"Name": "Deal", "StageName": "Prospecting",
                                    "CloseDate": "2024-06-30"})["id"]
    subscriber = emulator.subscriber()
    [created] = subscriber.events("/data/OpportunityChangeEvent")
    # Dates are days since the epoch.
    assert body_fields(created)["CloseDate"] == (dt.date(2024, 6, 30) - dt.date(1970, 1, 1)).days
    assert body_fields(created)["Probability"] == 10.0
    sf.Opportunity.update(opp_id, {"StageName": "Closed Won"})
    [_, won] = subscriber.events("/data/OpportunityChangeEvent")
    assert header(won)["changedFields"] == ["StageName", "Probability", "IsClosed", "IsWon",
                                            "LastModifiedDate"]
    assert body_fields(won)["IsWon"] is True and body_fields(won)["Amount"] is None


# ------------------------------------------------------------------ transactions & merging
def test_collection_write_of_one_change_is_one_event(emulator: Emulator, sf: Salesforce) -> None:
    subscriber = emulator.subscriber()
    position = subscriber.tip()
    created = sf.restful("composite/sobjects", method="POST", json={
        "records": [contact("Same", Title="Eng") for _ in range(3)]})
    ids = [r["id"] for r in created]
    [event] = subscriber.events(CONTACTS, position)
    assert header(event)["changeType"] == "CREATE" and header(event)["recordIds"] == ids

    position = event["replayId"]
    sf.restful("composite/sobjects", method="PATCH", json={"records": [
        {"attributes": {"type": "Contact"}, "id": i, "HasOptedOutOfEmail": True} for i in ids]})
    [event] = subscriber.events(CONTACTS, position)
    assert header(event)["changeType"] == "UPDATE" and header(event)["recordIds"] == ids
    assert header(event)["changedFields"] == ["HasOptedOutOfEmail", "LastModifiedDate"]

    position = event["replayId"]
    sf.restful("composite/sobjects", method="DELETE", params={"ids": ",".join(ids)})
    [event] = subscriber.events(CONTACTS, position)
    assert header(event)["changeType"] == "DELETE" and header(event)["recordIds"] == ids
    assert set(body_fields(event).values()) == {None}


def test_different_changes_in_one_request_share_a_transaction(emulator: Emulator,
                                                              sf: Salesforce) -> None:
    subscriber = emulator.subscriber()
    position = subscriber.tip()
    result = sf.restful("composite/sobjects", method="POST", json={"allOrNone": False, "records": [
        contact("One"), {"attributes": {"type": "Lead"}, "LastName": "L", "Company": "Acme"},
        contact("Two"), {"attributes": {"type": "Contact"}, "FirstName": "no last name"}]})
    assert [r["success"] for r in result] == [True, True, True, False]
    events = subscriber.events("/data/ChangeEvents", position)
    heads = [header(e) for e in events]
    assert [h["recordIds"] for h in heads] == [[r["id"]] for r in result[:3]]
    assert [h["sequenceNumber"] for h in heads] == [1, 2, 3]
    assert len({h["transactionKey"] for h in heads}) == 1
    assert len({h["commitNumber"] for h in heads}) == 1
    assert [h["entityName"] for h in heads] == ["Contact", "Lead", "Contact"]
    assert [e["channel"] for e in events] == [CONTACTS, "/data/LeadChangeEvent", CONTACTS]

    # allOrNone=true with a failure: nothing commits, nothing is published.
    position = events[-1]["replayId"]
    sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": [
        contact("Three"), {"attributes": {"type": "Contact"}, "FirstName": "x"}]})
    after = subscriber.poll("/data/ChangeEvents", position)
    assert after["events"] == [] and after["latest_replay_id"] == position


def test_composite_transaction_boundaries(emulator: Emulator, sf: Salesforce) -> None:
    subscriber = emulator.subscriber()

    def run(all_or_none: bool) -> list[dict[str, Any]]:
        position = subscriber.tip()
        sf.restful("composite", method="POST", json={"allOrNone": all_or_none, "compositeRequest": [
            {"method": "POST", "url": "/services/data/v59.0/sobjects/Account", "referenceId": "a",
             "body": {"Name": "Acme"}},
            {"method": "POST", "url": "/services/data/v59.0/sobjects/Contact", "referenceId": "c",
             "body": {"LastName": "Ng", "AccountId": "@{a.id}"}}]})
        return [header(e) for e in subscriber.events("/data/ChangeEvents", position)]

    together = run(True)
    assert [h["entityName"] for h in together] == ["Account", "Contact"]
    assert [h["sequenceNumber"] for h in together] == [1, 2]
    assert together[0]["transactionKey"] == together[1]["transactionKey"]
    # allOrNone=false: independent subrequests commit one by one.
    apart = run(False)
    assert [h["sequenceNumber"] for h in apart] == [1, 1]
    assert apart[0]["transactionKey"] != apart[1]["transactionKey"]
    assert apart[0]["commitNumber"] < apart[1]["commitNumber"]


def test_every_write_path_publishes(emulator: Emulator, sf: Salesforce) -> None:
    subscriber = emulator.subscriber()
    seeded = emulator.seed({"Account": [{"Name": "Acme"}],
                            "Contact": [{"LastName": "Ng", "AccountId": "@Account[0]"}],
                            "User": [{"Email": "rep@acme.com", "LastName": "Rep"}]})
    sf.Task.upsert("Front_Message_Id__c/msg_1", {"Subject": "hi"})
    sf.Task.upsert("Front_Message_Id__c/msg_1", {"Subject": "hi again"})
    sf.Account.delete(seeded["Account"][0])  # cascades to the contact
    emulator.admin("POST", "undelete", {"ids": seeded["Contact"]})

    heads = [header(e) for e in subscriber.events()]
    summary = [(h["entityName"], h["changeType"], h["sequenceNumber"]) for h in heads]
    assert summary == [("Account", "CREATE", 1), ("Contact", "CREATE", 2), ("User", "CREATE", 3),
                       ("Task", "CREATE", 1), ("Task", "UPDATE", 1),
                       ("Account", "DELETE", 1), ("Contact", "DELETE", 2),
                       ("Contact", "UNDELETE", 1)]
    # Admin writes look like automation: empty changeOrigin.
    assert {h["changeOrigin"] for h in heads[:3]} == {""}
    assert heads[0]["transactionKey"] == heads[2]["transactionKey"]  # one seed call
    assert heads[5]["transactionKey"] == heads[6]["transactionKey"]  # delete + cascade
    assert heads[4]["changedFields"] == ["Subject", "LastModifiedDate"]
    undeleted = subscriber.events()[-1]
    assert body_fields(undeleted)["Name"] == {"FirstName": None, "LastName": "Ng"}
    assert not emulator.rows("Contact")[0]["IsDeleted"]


def test_large_text_updates_are_sent_as_diffs(emulator: Emulator, sf: Salesforce) -> None:
    lines = [f"line {i:03d} " + "x" * 40 for i in range(40)]
    case_id = sf.Case.create({"Subject": "s", "Description": "\n".join(lines)})["id"]
    subscriber = emulator.subscriber()
    position = subscriber.tip()
    lines[10] = "line 010 was rewritten"
    new_text = "\n".join(lines)
    sf.Case.update(case_id, {"Description": new_text})
    sf.Case.update(case_id, {"Description": "short now"})
    diffed, replaced = subscriber.events("/data/CaseChangeEvent", position)
    assert header(diffed)["diffFields"] == ["Description"]
    assert "Description" in header(diffed)["changedFields"]
    value = body_fields(diffed)["Description"]
    assert value.startswith(f"--- \n+++ {hashlib.sha256(new_text.encode()).hexdigest()}\n")
    assert "@@ -11 +11 @@" in value and "+line 010 was rewritten" in value
    assert len(value) < len(new_text)
    # Below 1,000 characters the value is sent whole.
    assert header(replaced)["diffFields"] == []
    assert body_fields(replaced)["Description"] == "short now"


# ------------------------------------------------------------------ replay
def test_replay_from_a_stored_id_returns_exactly_the_later_events(emulator: Emulator,
                                                                 sf: Salesforce) -> None:
    subscriber = emulator.subscriber()
    early = sf.Contact.create({"LastName": "Early"})["id"]
    sf.Lead.create({"LastName": "Early", "Company": "Acme"})
    first = subscriber.poll(replay_id=-2)
    assert len(first["events"]) == 2
    stored = first["latest_replay_id"]
    assert stored == first["events"][-1]["replayId"]

    later = sf.Contact.create({"LastName": "Later"})["id"]
    lead = sf.Lead.create({"LastName": "Later", "Company": "Acme"})["id"]
    sf.Contact.update(early, {"Title": "CEO"})
    again = subscriber.poll(replay_id=stored)
    assert [(header(e)["recordIds"], header(e)["changeType"]) for e in again["events"]] == [
        ([later], "CREATE"), ([lead], "CREATE"), ([early], "UPDATE")]
    replay_ids = [e["replayId"] for e in again["events"]]
    assert replay_ids == sorted(replay_ids) and replay_ids[0] > stored
    assert again["latest_replay_id"] == replay_ids[-1] and again["has_more"] is False

    # A per-entity channel skips other entities but still advances to the tip.
    contacts_only = subscriber.poll(CONTACTS, stored)
    assert [header(e)["recordIds"] for e in contacts_only["events"]] == [[later], [early]]
    assert contacts_only["latest_replay_id"] == replay_ids[-1]
    # Paging with limit.
    page = subscriber.poll(replay_id=stored, limit=2)
    assert [e["replayId"] for e in page["events"]] == replay_ids[:2] and page["has_more"]
    assert page["latest_replay_id"] == replay_ids[1]
    rest = subscriber.poll(replay_id=page["latest_replay_id"], limit=2)
    assert [e["replayId"] for e in rest["events"]] == replay_ids[2:] and not rest["has_more"]
    # LATEST: nothing old, just the position.
    latest = subscriber.poll(replay_id=-1)
    assert latest["events"] == [] and latest["latest_replay_id"] == replay_ids[-1]


def test_long_poll_returns_as_soon_as_an_event_commits(emulator: Emulator,
                                                       sf: Salesforce) -> None:
    subscriber = emulator.subscriber()
    position = subscriber.tip()
    writer = emulator.client()
    timer = threading.Timer(0.5, lambda: writer.Contact.create({"LastName": "Late"}))
    timer.start()
    started = time.monotonic()
    body = subscriber.poll(CONTACTS, position, wait=20)
    elapsed = time.monotonic() - started
    timer.join()
    assert [header(e)["changeType"] for e in body["events"]] == ["CREATE"]
    assert 0.4 <= elapsed < 10
    started = time.monotonic()
    idle = subscriber.poll(CONTACTS, body["latest_replay_id"], wait=1)
    assert idle["events"] == [] and time.monotonic() - started >= 0.9
    assert idle["latest_replay_id"] == body["latest_replay_id"]


def test_replay_id_outside_retention_is_refused(emulator: Emulator, sf: Salesforce) -> None:
    sf.Contact.create({"LastName": "Old"})
    subscriber = emulator.subscriber()
    before_first = subscriber.poll(replay_id=-2)["earliest_replay_id"]
    stored = subscriber.tip()
    # 73 hours later the event is gone (72 h retention); log in again, sessions idled out.
    emulator.admin("POST", "config", {"clock_offset": 73 * 3600})
    subscriber = emulator.subscriber()
    for stale in (before_first, stored + 1000):
        resp = subscriber.get(replay_id=stale)
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["code"] == "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
        assert error["grpc_status"] == "INVALID_ARGUMENT"
    # The last retained position is still valid; EARLIEST resolves to it.
    assert subscriber.poll(replay_id=stored)["events"] == []
    earliest = subscriber.poll(replay_id=-2)
    assert earliest["events"] == [] and earliest["earliest_replay_id"] == stored
    fresh = emulator.client().Contact.create({"LastName": "New"})["id"]
    assert [header(e)["recordIds"] for e in subscriber.events(replay_id=-2)] == [[fresh]]

    # Retention is configurable.
    emulator.admin("POST", "config", {"cdc_retention_hours": 1, "clock_offset": 75 * 3600})
    subscriber = emulator.subscriber()
    assert subscriber.get(replay_id=stored).status_code == 400
    assert subscriber.poll(replay_id=-2)["events"] == []


def test_reset_keeps_replay_ids_increasing(emulator: Emulator, sf: Salesforce) -> None:
    sf.Contact.create({"LastName": "Before"})
    subscriber = emulator.subscriber()
    stored = subscriber.tip()
    emulator.admin("POST", "reset")
    assert subscriber.get(replay_id=stored - 1).status_code == 400
    sf.Contact.create({"LastName": "After"})
    [event] = subscriber.events(replay_id=stored)
    assert event["replayId"] > stored


# ------------------------------------------------------------------ allocations
def test_daily_delivery_allocation(emulator: Emulator, sf: Salesforce) -> None:
    emulator.admin("POST", "config", {"cdc_delivery_limit": 3})
    sf.restful("composite/sobjects", method="POST",
               json={"records": [contact(f"C{i}") for i in range(5)]})
    subscriber = emulator.subscriber()
    first = subscriber.poll(replay_id=-2)
    assert len(first["events"]) == 3 and first["has_more"] is True
    assert first["delivery"] == {"used": 3, "max": 3}
    refused = subscriber.get(replay_id=first["latest_replay_id"])
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == \
        "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"
    # Empty answers cost nothing; the window is a rolling 24 h.
    emulator.admin("POST", "config", {"clock_offset": 25 * 3600})
    subscriber = emulator.subscriber()
    rest = subscriber.poll(replay_id=first["latest_replay_id"])
    assert len(rest["events"]) == 2 and rest["delivery"]["used"] == 2
    info = emulator.admin("GET", "cdc")
    assert info["delivered"] == {"frontforce-emulator-client": 2}
    # Not charged to the REST API allocation.
    assert emulator.stats()["by_kind"] == {"collections_create": 1}


def test_entity_selection_limit(emulator: Emulator) -> None:
    subscriber = emulator.subscriber()
    six = ["Contact", "Lead", "Account", "Opportunity", "Case", "User"]

    def channels(entities: list[str]) -> str:
        return ",".join(f"/data/{e}ChangeEvent" for e in entities)

    resp = subscriber.get(channels(six))
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "emulator.cdc.entity.selection.limit.exceeded"
    assert subscriber.get(channels(six[:5])).status_code == 200
    assert emulator.admin("GET", "config")["cdc_selected_entities"] == six[:5]
    # The selection is sticky: a sixth entity later is refused too, selected ones still work.
    assert subscriber.get("/data/TaskChangeEvent").status_code == 400
    assert subscriber.get(CONTACTS).status_code == 200
    assert subscriber.get("/data/ChangeEvents").status_code == 200
    emulator.admin("POST", "config", {"cdc_selected_entities": []})
    assert subscriber.get("/data/TaskChangeEvent").status_code == 200
    emulator.admin("POST", "config", {"cdc_entity_limit": 0})  # the add-on: no ceiling
    assert subscriber.get(channels([*six, "Task"])).status_code == 200

    unknown = subscriber.get("/data/FeedItemChangeEvent")
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "emulator.cdc.topic.invalid"
    assert subscriber.http.get("/__cdc/events", params={"replay_id": -1}).status_code == 400
    anonymous = subscriber.http.get("/__cdc/events", params={"channel": CONTACTS},
                                    headers={"Authorization": "Bearer nope"})
    assert anonymous.status_code == 401
    assert anonymous.json()[0]["errorCode"] == "INVALID_SESSION_ID"


# ------------------------------------------------------------------ Pub/Sub compatibility
def _expand(schema: dict[str, Any], bitmaps: list[str]) -> list[str]:
    """Bitmap -> field names, following Salesforce's ChangeEventHeaderUtility."""
    fields = schema["fields"]
    names: list[str] = []
    if bitmaps and bitmaps[0].startswith("0x"):
        top = int(bitmaps[0], 16)
        names = [f["name"] for i, f in enumerate(fields) if top >> i & 1]
    for item in bitmaps:
        if "-" not in item:
            continue
        position, _, bits = item.partition("-")
        parent = fields[int(position)]
        child = next(t for t in parent["type"] if isinstance(t, dict))
        value = int(bits, 16)
        nested = [f"{parent['name']}.{c['name']}" for i, c in enumerate(child["fields"])
                  if value >> i & 1]
        if nested:
            names.remove(parent["name"])
            names += nested
    return names


def test_payloads_conform_to_the_avro_schema_and_bitmaps(emulator: Emulator,
                                                         sf: Salesforce) -> None:
    contact_id = sf.Contact.create({"FirstName": "Ada", "LastName": "Ng", "Phone": "1"})["id"]
    sf.Contact.update(contact_id, {"FirstName": "Augusta", "Phone": None})
    sf.Contact.delete(contact_id)
    subscriber = emulator.subscriber()
    named = subscriber.events(CONTACTS)
    bitmapped = subscriber.events(CONTACTS, bitmap="true")
    schema_info = subscriber.http.get(f"/__cdc/schemas/{bitmapped[0]['schemaId']}").json()
    assert schema_info["schema_id"] == bitmapped[0]["schemaId"]
    schema = json.loads(schema_info["schema_json"])
    assert schema["name"] == "ContactChangeEvent" and schema["fields"][0]["name"] == HEADER
    parsed = fastavro.parse_schema(schema)
    for event in bitmapped:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed, event["payload"])
        buffer.seek(0)
        assert fastavro.schemaless_reader(buffer, parsed, None) == event["payload"]
    update_bits = header(bitmapped[1])
    assert update_bits["changedFields"][0].startswith("0x")
    assert any("-0x" in b for b in update_bits["changedFields"])  # nested Name bitmap
    for plain, bits in zip(named, bitmapped, strict=True):
        for key in ("changedFields", "nulledFields", "diffFields"):
            assert sorted(_expand(schema, header(bits)[key])) == sorted(header(plain)[key])
    assert subscriber.http.get("/__cdc/schemas/nope").status_code == 404


def test_gap_events_can_be_injected(emulator: Emulator, sf: Salesforce) -> None:
    contact_id = sf.Contact.create({"LastName": "Ng"})["id"]
    subscriber = emulator.subscriber()
    position = subscriber.tip()
    emulator.admin("POST", "cdc/gap", {"entity": "Contact", "change_type": "GAP_UPDATE",
                                       "record_ids": [contact_id]})
    emulator.admin("POST", "cdc/gap", {"entity": "Contact", "change_type": "GAP_OVERFLOW"})
    gap, overflow = subscriber.events(CONTACTS, position)
    assert (header(gap)["changeType"], header(gap)["recordIds"]) == ("GAP_UPDATE", [contact_id])
    assert (header(overflow)["changeType"], header(overflow)["recordIds"]) == ("GAP_OVERFLOW", [])
    assert set(body_fields(gap).values()) == {None}


def test_change_log_survives_persistence(tmp_path: Path) -> None:
    state = OrgState()
    ctx = Ctx(state, state.integration_user_id)
    with state.lock:
        record_id = create(ctx, "Contact", {"LastName": "Durable"})  # auto-commits
        update(ctx, "Contact", record_id, {"Title": "CEO"})
    assert [e["payload"][HEADER]["changeType"] for e in state.cdc.events] == ["CREATE", "UPDATE"]
    state.save(tmp_path / "org.json")
    loaded = OrgState.load(tmp_path / "org.json")
    assert loaded.cdc.events == state.cdc.events
    with loaded.lock:
        create(Ctx(loaded, loaded.integration_user_id), "Contact", {"LastName": "Next"})
    assert loaded.cdc.events[-1]["replayId"] == state.cdc.last_replay_id + 1


@pytest.mark.parametrize("entity", ["Account", "Contact", "Lead", "Opportunity", "Case", "User",
                                    "Task"])
def test_every_captured_entity_has_a_valid_schema(entity: str) -> None:
    from emulators.salesforce._cdc import avro_schema

    fastavro.parse_schema(avro_schema(entity))
