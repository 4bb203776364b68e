"""Change Data Capture in the Salesforce emulator: writes made through unmodified
simple-salesforce (and the admin API) read back over the Pub/Sub API (gRPC ``eventbus.v1``)
with stubs generated from Salesforce's proto, payloads decoded with the schema GetSchema
returns."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import fastavro
import grpc
import pytest
from simple_salesforce import Salesforce

from emulators.salesforce import OrgState
from emulators.salesforce._writes import Ctx, create, update
from eventbus import pubsub_api_pb2 as pb
from tests.emulators.conftest import EARLIEST, KEEPALIVE_S, LATEST, Emulator, expand_bitmap

REPO = Path(__file__).resolve().parents[2]

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


def hex_bytes(bits: int) -> str:
    """A bitmap as Salesforce writes it: ``0x``, whole bytes, upper case."""
    digits = f"{bits:X}"
    return "0x" + "0" * (len(digits) % 2) + digits


def error_code(exc: grpc.RpcError) -> str:
    """Salesforce's custom error code: the ``error-code`` trailer of the failed call."""
    trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
    return str(trailers.get("error-code"))


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
    # Expanded as ChangeEventHeaderUtility does: top-level fields, then compound children.
    assert header(second)["changedFields"] == ["Phone", "LastModifiedDate", "Name.FirstName"]
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
    assert again["latest_replay_id"] == replay_ids[-1] and again["pending_num_requested"] == 97

    # A per-entity channel skips other entities but still advances to the tip.
    contacts_only = subscriber.poll(CONTACTS, stored)
    assert [header(e)["recordIds"] for e in contacts_only["events"]] == [[later], [early]]
    assert contacts_only["latest_replay_id"] == replay_ids[-1]
    # Credit: never more than num_requested; the keepalive's latest_replay_id then stops at
    # the last delivered event (safe to resume from), not at the tip.
    page = subscriber.poll(replay_id=stored, limit=2)
    assert [e["replayId"] for e in page["events"]] == replay_ids[:2]
    assert page["latest_replay_id"] == replay_ids[1] and page["pending_num_requested"] == 0
    rest = subscriber.poll(replay_id=page["latest_replay_id"], limit=2)
    assert [e["replayId"] for e in rest["events"]] == replay_ids[2:]
    assert rest["latest_replay_id"] == replay_ids[-1] and rest["pending_num_requested"] == 1
    # LATEST: nothing old, just the position.
    latest = subscriber.poll(replay_id=-1)
    assert latest["events"] == [] and latest["latest_replay_id"] == replay_ids[-1]


def test_flow_control_and_keepalive_on_one_stream(emulator: Emulator, sf: Salesforce) -> None:
    """The server sends no more events than requested, asks for nothing in between, and
    says it is alive (with the latest position) when it has nothing to send."""
    subscriber = emulator.subscriber()
    position = subscriber.tip(CONTACTS)
    ids = [r["id"] for r in sf.restful("composite/sobjects", method="POST", json={
        "allOrNone": False, "records": [contact(f"C{i}", Title=f"T{i}") for i in range(5)]})]
    with subscriber.open(CONTACTS, position, limit=2) as stream:
        first = stream.next()
        assert len(first.events) == 2 and first.pending_num_requested == 0
        assert first.latest_replay_id == first.events[-1].replay_id
        # Out of credit: only keepalives, whose latest_replay_id is the last delivered event.
        started = time.monotonic()
        idle = stream.next()
        assert list(idle.events) == [] and time.monotonic() - started >= KEEPALIVE_S * 0.8
        assert idle.latest_replay_id == first.events[-1].replay_id
        assert idle.pending_num_requested == 0 and idle.rpc_id == first.rpc_id
        # More credit on the same stream; its replay preset is ignored (first request only).
        stream.requests.put(pb.FetchRequest(replay_preset=pb.EARLIEST, num_requested=10))
        rest: list[Any] = []
        while len(rest) < 3:
            rest += stream.next().events
        got = [subscriber.decode(e) for e in [*first.events, *rest]]
        assert [header(e)["recordIds"] for e in got] == [[i] for i in ids]
        # An event committed while the stream waits arrives without a new request.
        timer = threading.Timer(0.3, lambda: sf.Contact.create({"LastName": "Late"}))
        timer.start()
        late = stream.next()
        while not late.events:
            late = stream.next()
        timer.join()
        assert header(subscriber.decode(late.events[0]))["changeType"] == "CREATE"
        assert late.pending_num_requested == 6


def test_subscribe_argument_errors(emulator: Emulator) -> None:
    subscriber = emulator.subscriber()
    refused = subscriber.error(limit=0)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(refused) == "sfdc.platform.eventbus.grpc.subscription.fetch.requested.events.invalid"
    custom = pb.FetchRequest(topic_name=CONTACTS, replay_preset=pb.CUSTOM, num_requested=1)
    call = subscriber.stub.Subscribe(iter([custom]), metadata=subscriber.metadata, timeout=10)
    with pytest.raises(grpc.RpcError) as exc:
        next(call)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(exc.value) == \
        "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed"
    # A later request may omit the topic, but not name another one.
    with subscriber.open(CONTACTS, LATEST, limit=1) as stream:
        stream.more(1, topic="/data/LeadChangeEvent")
        with pytest.raises(grpc.RpcError) as exc:
            while True:
                stream.next()
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = subscriber.error("/data/FeedItemChangeEvent")
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert "rpcId: " in unknown.details()


def test_authentication_through_call_metadata(emulator: Emulator) -> None:
    token = emulator.token()
    good = emulator.subscriber(token)
    assert good.poll()["events"] == []
    org_id = str(token["id"]).split("/")[-2]
    for metadata in (
            (("accesstoken", "00Dnope!bad"), ("instanceurl", token["instance_url"]),
             ("tenantid", org_id)),
            (("accesstoken", token["access_token"]), ("instanceurl", token["instance_url"]),
             ("tenantid", "00DXX0000000001AAA")),
            (("accesstoken", token["access_token"]), ("tenantid", org_id))):
        with pytest.raises(grpc.RpcError) as exc:
            good.stub.GetTopic(pb.TopicRequest(topic_name=CONTACTS), metadata=metadata,
                               timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert exc.value.details().startswith(
            "An authentication exception occurred. Provide valid authentication via metadata "
            "headers. rpcId: ")
        assert error_code(exc.value) == "sfdc.platform.eventbus.grpc.service.auth.error"
    # The 15-character org id works as well; an expired session does not.
    short = (("accesstoken", token["access_token"]), ("instanceurl", token["instance_url"]),
             ("tenantid", org_id[:15]))
    info = good.stub.GetTopic(pb.TopicRequest(topic_name=CONTACTS), metadata=short, timeout=10)
    assert info.tenant_guid == org_id and info.can_subscribe and not info.can_publish
    emulator.admin("POST", "sessions/expire", {"access_token": token["access_token"]})
    assert good.error().code() == grpc.StatusCode.UNAUTHENTICATED


def test_topics_and_schemas(emulator: Emulator) -> None:
    subscriber = emulator.subscriber()
    info = subscriber.stub.GetTopic(pb.TopicRequest(topic_name=CONTACTS),
                                    metadata=subscriber.metadata, timeout=10)
    assert info.topic_name == CONTACTS and info.rpc_id
    schema = subscriber.schema(info.schema_id)
    assert schema["name"] == "ContactChangeEvent" and schema["fields"][0]["name"] == HEADER
    fastavro.parse_schema(schema)
    again = subscriber.stub.GetTopic(pb.TopicRequest(topic_name=CONTACTS),
                                     metadata=subscriber.metadata, timeout=10)
    assert again.schema_id == info.schema_id  # fingerprints: stable
    every = subscriber.stub.GetTopic(pb.TopicRequest(topic_name="/data/ChangeEvents"),
                                     metadata=subscriber.metadata, timeout=10)
    assert every.schema_id == ""  # each event names its entity's schema
    with pytest.raises(grpc.RpcError) as exc:
        subscriber.stub.GetSchema(pb.SchemaRequest(schema_id="nope"),
                                  metadata=subscriber.metadata, timeout=10)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_replay_id_outside_retention_is_refused(emulator: Emulator, sf: Salesforce) -> None:
    sf.Contact.create({"LastName": "Old"})
    subscriber = emulator.subscriber()
    before_first = emulator.admin("GET", "cdc")["earliest_replay_id"]
    stored = subscriber.tip()
    # 73 hours later the event is gone (72 h retention); log in again, sessions idled out.
    emulator.admin("POST", "config", {"clock_offset": 73 * 3600})
    assert subscriber.error().code() == grpc.StatusCode.UNAUTHENTICATED
    subscriber = emulator.subscriber()
    for stale in (before_first, stored + 1000):
        refused = subscriber.error(replay_id=stale)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_code(refused) == \
            "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
        assert refused.details().startswith(
            "The Replay ID validation failed. Ensure that the Replay ID is valid. rpcId: ")
    # A replay id that is not one of ours at all.
    malformed = pb.FetchRequest(topic_name=CONTACTS, replay_preset=pb.CUSTOM,
                                replay_id=b"\x01\x02", num_requested=1)
    call = subscriber.stub.Subscribe(iter([malformed]), metadata=subscriber.metadata, timeout=10)
    with pytest.raises(grpc.RpcError) as exc:
        next(call)
    assert error_code(exc.value) == "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
    # The last retained position is still valid; EARLIEST resolves to it.
    assert subscriber.poll(replay_id=stored)["events"] == []
    assert subscriber.poll(replay_id=EARLIEST)["events"] == []
    assert emulator.admin("GET", "cdc")["earliest_replay_id"] == stored
    fresh = emulator.client().Contact.create({"LastName": "New"})["id"]
    assert [header(e)["recordIds"] for e in subscriber.events(replay_id=EARLIEST)] == [[fresh]]

    # Retention is configurable (in hours of org time; the tests set it short).
    emulator.admin("POST", "config", {"cdc_retention_hours": 1, "clock_offset": 75 * 3600})
    subscriber = emulator.subscriber()
    assert subscriber.error(replay_id=stored).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert subscriber.poll(replay_id=EARLIEST)["events"] == []


def test_reset_keeps_replay_ids_increasing(emulator: Emulator, sf: Salesforce) -> None:
    sf.Contact.create({"LastName": "Before"})
    subscriber = emulator.subscriber()
    stored = subscriber.tip()
    emulator.admin("POST", "reset")
    assert subscriber.error(replay_id=stored - 1).code() == grpc.StatusCode.INVALID_ARGUMENT
    sf.Contact.create({"LastName": "After"})
    [event] = subscriber.events(replay_id=stored)
    assert event["replayId"] > stored


# ------------------------------------------------------------------ allocations
def test_daily_delivery_allocation(emulator: Emulator, sf: Salesforce) -> None:
    emulator.admin("POST", "config", {"cdc_delivery_limit": 3})
    sf.restful("composite/sobjects", method="POST",
               json={"records": [contact(f"C{i}") for i in range(5)]})
    subscriber = emulator.subscriber()
    with subscriber.open(replay_id=EARLIEST) as stream:
        first = stream.next()
        assert len(first.events) == 3  # cut short at the allocation...
        with pytest.raises(grpc.RpcError) as exc:  # ...then the subscription is closed
            stream.next()
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_code(exc.value) == "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"
    assert exc.value.details().startswith("You have exceeded the event delivery limit for your org.")
    stored = int.from_bytes(first.events[-1].replay_id, "big")
    assert subscriber.error(replay_id=stored).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Nothing pending costs nothing: an idle subscription stays open.
    assert subscriber.poll(replay_id=LATEST)["events"] == []
    # The window is a rolling 24 h.
    emulator.admin("POST", "config", {"clock_offset": 25 * 3600})
    subscriber = emulator.subscriber()
    rest = subscriber.poll(replay_id=stored)
    assert len(rest["events"]) == 2
    info = emulator.admin("GET", "cdc")
    assert info["delivered"] == {"frontforce-emulator-client": 2}
    # Not charged to the REST API allocation.
    assert emulator.stats()["by_kind"] == {"collections_create": 1}


def test_entity_selection_limit(emulator: Emulator) -> None:
    subscriber = emulator.subscriber()
    six = ["Contact", "Lead", "Account", "Opportunity", "Case", "User"]
    for entity in six[:5]:
        assert subscriber.poll(f"/data/{entity}ChangeEvent")["events"] == []
    assert emulator.admin("GET", "config")["cdc_selected_entities"] == six[:5]
    # The selection is sticky: a sixth entity is refused, selected ones still work.
    refused = subscriber.error("/data/UserChangeEvent")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_code(refused) == "emulator.cdc.entity.selection.limit.exceeded"
    assert subscriber.poll(CONTACTS)["events"] == []
    assert subscriber.poll("/data/ChangeEvents")["events"] == []
    emulator.admin("POST", "config", {"cdc_selected_entities": []})
    assert subscriber.poll("/data/TaskChangeEvent")["events"] == []
    emulator.admin("POST", "config", {"cdc_entity_limit": 0})  # the add-on: no ceiling
    for entity in six:
        assert subscriber.poll(f"/data/{entity}ChangeEvent")["events"] == []


# ------------------------------------------------------------------ Pub/Sub compatibility
def test_payloads_conform_to_the_avro_schema_and_bitmaps(emulator: Emulator,
                                                         sf: Salesforce) -> None:
    contact_id = sf.Contact.create({"FirstName": "Ada", "LastName": "Ng", "Phone": "1"})["id"]
    sf.Contact.update(contact_id, {"FirstName": "Augusta", "Phone": None})
    sf.Contact.update(contact_id, {"FirstName": None})
    sf.Contact.delete(contact_id)
    subscriber = emulator.subscriber()
    created, updated, nulled_name, deleted = subscriber.events(CONTACTS)
    schema = subscriber.schema(updated["schemaId"])
    names = [f["name"] for f in schema["fields"]]
    # changedFields: one bitmap over top-level positions (whole bytes, upper case hex), then
    # "{position of Name}-{bitmap over Name's children}"; Name's own bit stays clear.
    top, nested = updated["bitmaps"]["changedFields"]
    assert top == hex_bytes(1 << names.index("Phone") | 1 << names.index("LastModifiedDate"))
    assert nested == f"{names.index('Name')}-0x01"  # FirstName is Name's first child
    assert header(updated)["changedFields"] == ["Phone", "LastModifiedDate", "Name.FirstName"]
    assert updated["bitmaps"]["nulledFields"] == [hex_bytes(1 << names.index("Phone"))]
    assert header(updated)["nulledFields"] == ["Phone"]
    # Only a nested field nulled: no top-level element at all.
    assert nulled_name["bitmaps"]["nulledFields"] == [f"{names.index('Name')}-0x01"]
    assert header(nulled_name)["nulledFields"] == ["Name.FirstName"]
    assert body_fields(updated)["Name"] == {"FirstName": "Augusta", "LastName": None}
    # CREATE and DELETE carry no field lists; DELETE has every field empty.
    assert created["bitmaps"] == deleted["bitmaps"] == {
        "changedFields": [], "nulledFields": [], "diffFields": []}
    assert set(body_fields(deleted).values()) == {None}
    assert expand_bitmap(schema, ["0x03"]) == ["ChangeEventHeader", names[1]]


def test_a_client_generated_from_the_proto_reads_the_emulator(emulator: Emulator, sf: Salesforce,
                                                            tmp_path: Path) -> None:
    """Guards against an emulator that only our own client understands: stubs generated now
    from Salesforce's proto with grpcio-tools, in a process that imports nothing of this
    repository, subscribe over TLS, fetch the schema with GetSchema and decode a payload."""
    contact_id = sf.Contact.create({"FirstName": "Grace", "LastName": "Hopper",
                                    "Email": "grace@navy.mil"})["id"]
    proto = tmp_path / "proto"
    proto.mkdir()
    (proto / "pubsub_api.proto").write_bytes((REPO / "eventbus" / "pubsub_api.proto").read_bytes())
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto}", f"--python_out={proto}",
                    f"--grpc_python_out={proto}", "pubsub_api.proto"], check=True, cwd=proto)
    token = emulator.token()
    client = tmp_path / "client.py"
    client.write_text(PLAIN_CLIENT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(proto)
    out = subprocess.run(
        [sys.executable, str(client), emulator.pubsub_target,
         str(emulator.ca), token["access_token"], token["instance_url"],
         str(token["id"]).split("/")[-2]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ours"] == []  # its own stubs: nothing of this repository was imported
    assert result["schema_name"] == "ContactChangeEvent"
    event = result["event"]
    assert event["ChangeEventHeader"]["changeType"] == "CREATE"
    assert event["ChangeEventHeader"]["recordIds"] == [contact_id]
    assert event["Name"] == {"FirstName": "Grace", "LastName": "Hopper"}
    assert event["Email"] == "grace@navy.mil"


PLAIN_CLIENT = """
import io, json, sys
import fastavro, grpc
import pubsub_api_pb2 as pb
import pubsub_api_pb2_grpc as pb_grpc

target, ca, token, instance, org = sys.argv[1:]
channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(open(ca, "rb").read()))
stub = pb_grpc.PubSubStub(channel)
md = (("accesstoken", token), ("instanceurl", instance), ("tenantid", org))
topic = stub.GetTopic(pb.TopicRequest(topic_name="/data/ContactChangeEvent"), metadata=md)
request = pb.FetchRequest(topic_name="/data/ContactChangeEvent",
                          replay_preset=pb.ReplayPreset.EARLIEST, num_requested=1)
for response in stub.Subscribe(iter([request]), metadata=md, timeout=30):
    if response.events:
        consumer_event = response.events[0]
        break
assert consumer_event.event.schema_id == topic.schema_id
info = stub.GetSchema(pb.SchemaRequest(schema_id=consumer_event.event.schema_id), metadata=md)
schema = json.loads(info.schema_json)
decoded = fastavro.schemaless_reader(io.BytesIO(consumer_event.event.payload),
                                     fastavro.parse_schema(schema), None)
ours = sorted(m for m in sys.modules
              if m.split(".")[0] in ("eventbus", "emulators", "frontforce", "sources", "tests"))
print(json.dumps({"ours": ours, "schema_name": schema["name"], "event": decoded}))
"""


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


def test_updates_within_one_millisecond_still_list_last_modified_date() -> None:
    """Every update sets LastModifiedDate, so its change event lists it. The emulator can
    answer two writes within one millisecond (a real call takes tens): each write's time is
    after the one before, or the second update's LastModifiedDate would equal the first's
    and its event would not list it (seen once in CI, on two upserts back to back)."""
    state = OrgState()
    ctx = Ctx(state, state.integration_user_id)
    with state.lock:
        record_id = create(ctx, "Contact", {"LastName": "Quick"})
        for i in range(50):  # far faster than the clock's millisecond
            state.begin()  # each its own transaction, as the router runs a request
            try:
                update(ctx, "Contact", record_id, {"Title": f"T{i}"})
            finally:
                state.end()
    updates = [e["payload"][HEADER] for e in state.cdc.events][1:]
    assert len(updates) == 50
    assert all(h["changedFields"] == ["Title", "LastModifiedDate"] for h in updates), updates


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
