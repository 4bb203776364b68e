"""End to end on the real broker and registry: signed Front webhooks in, Salesforce Tasks
out (through the receiver, a Faust worker and the Salesforce sink, as separate processes)."""

from __future__ import annotations

import contextlib
import json
import ssl
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators.front import WebhookEmitter, inbound_email_event, sign_app
from emulators.scenario import people, seed_salesforce
from frontforce.demo import read_topic
from frontforce.kafka import read_to_end
from frontforce.lag import describe_lag, wait_settled
from frontforce.localstack import LocalStack
from tests.conftest import new_pipeline

KNOWN = people(12, seed=3)[:8]
STRANGERS = people(12, seed=3)[8:]


class Pipeline:
    def __init__(self, stack: LocalStack, contact_ids: dict[str, str]) -> None:
        self.stack = stack
        self.contact_ids = contact_ids
        assert stack.ca_file is not None
        self.admin = httpx.Client(base_url=stack.salesforce_url,
                                  verify=ssl.create_default_context(cafile=str(stack.ca_file)))
        self.emitter = WebhookEmitter(stack.receiver_url, stack.app_secret.encode())
        self.front = httpx.Client(base_url=stack.front_url)

    def front_conversations(self, *ids: str) -> None:
        """Conversations the Front emulator holds under these ids (the Front sink writes to
        them)."""
        r = self.front.post("/__admin/seed", json={"conversations": [
            {"id": cid, "subject": f"Subject {cid}"} for cid in ids]})
        assert r.status_code == 200, r.text

    def front_state(self, conversation: str) -> dict[str, Any]:
        """The conversation as Front's API shows it: tag names and comment bodies."""
        headers = {"Authorization": f"Bearer {self.stack.front_token}"}
        conv = self.front.get(f"/conversations/{conversation}", headers=headers).json()
        comments = self.front.get(f"/conversations/{conversation}/comments", headers=headers).json()
        return {"tags": sorted(t["name"] for t in conv.get("tags") or []),
                "comments": [c["body"] for c in comments.get("_results") or []],
                "assignee": (conv.get("assignee") or {}).get("email")}

    def tasks(self) -> list[dict[str, Any]]:
        r = self.admin.get("/__admin/records/Task")
        r.raise_for_status()
        body = r.json()
        return list(body["records"] if isinstance(body, dict) else body)

    def tasks_for(self, message_ids: set[str], expect: int, timeout: float = 90) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = [t for t in self.tasks() if t.get("Front_Message_Id__c") in message_ids]
            if len(found) >= expect:
                return found
            time.sleep(0.5)
        return found

    def topic(self, logical: str) -> list[dict[str, Any]]:
        return read_topic(self.stack.bootstrap, self.stack.registry_url,
                          f"{self.stack.topic_prefix}{logical}")

    def settle(self) -> None:
        groups = self.stack.worker_groups
        assert wait_settled(self.stack.bootstrap, groups, timeout_s=90), describe_lag(self.stack.bootstrap, groups)


def wait(what: str, check: Any, timeout: float = 60) -> Any:
    """``check()``'s first truthy result, asked every half second for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def event(sender: str, tag: str, i: int = 0) -> dict[str, Any]:
    return inbound_email_event(
        base_url="https://acme.api.frontapp.com", event_id=f"evt_{tag}{i}",
        conversation_id=f"cnv_{tag}{i}", message_id=f"msg_{tag}{i}", inbox_id="inb_1",
        sender=sender, sender_name=None, to="support@acme.example", subject=f"Subject {i}",
        text=f"Body {i}", emitted_at=time.time())


@contextlib.contextmanager
def running_pipeline(infra: LocalStack, state_dir: Path) -> Iterator[Pipeline]:
    """A pipeline on fresh topics: Salesforce seeded with KNOWN, snapshot loaded and indexed,
    receiver + worker + sink running; everything it started is stopped on exit."""
    stack = new_pipeline(infra, state_dir)
    try:
        stack.start_salesforce()
        stack.start_front(context_fields=True)
        stack.write_config()
        stack.frontforce("setup")
        assert stack.ca_file is not None
        seeded = seed_salesforce(stack.salesforce_url, str(stack.ca_file), KNOWN)
        stack.frontforce("load", "salesforce")
        stack.start_pipeline()
        snapshot_groups = {stack.app_id: stack.worker_groups[stack.app_id][:2]}
        assert wait_settled(stack.bootstrap, snapshot_groups, timeout_s=90), (
            f"worker did not index the Salesforce snapshot: {describe_lag(stack.bootstrap, snapshot_groups)}")
        yield Pipeline(stack, seeded["contact_ids"])
    finally:
        stack.stop_all(infra=False)


@pytest.fixture(scope="module")
def pipeline(infra: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with running_pipeline(infra, tmp_path_factory.mktemp("pipeline")) as p:
        yield p


def test_n_signed_webhooks_make_n_tasks_each_on_the_senders_contact(pipeline: Pipeline) -> None:
    """Guards the core promise: every Front message is logged once, on the right Contact."""
    tag = uuid.uuid4().hex[:6]
    sent = {}
    for i in range(24):
        person = KNOWN[i % len(KNOWN)]
        assert pipeline.emitter.deliver(event(person.email.upper() if i % 5 == 0 else person.email,
                                              tag, i)) == 200
        sent[f"msg_{tag}{i}"] = person.email
    tasks = pipeline.tasks_for(set(sent), expect=len(sent))
    assert len(tasks) == len(sent)
    for t in tasks:
        assert t["WhoId"] == pipeline.contact_ids[sent[t["Front_Message_Id__c"]]]
        assert t["Subject"].startswith("Inbound email: Subject")
        assert t["TaskSubtype"] == "Email"
    pipeline.settle()
    assert len([t for t in pipeline.tasks() if t.get("Front_Message_Id__c") in sent]) == len(sent)


def test_redelivered_webhook_still_writes_one_task(pipeline: Pipeline) -> None:
    """Front delivers at least once; a retry must not double the activity in Salesforce."""
    tag = uuid.uuid4().hex[:6]
    ev = event(KNOWN[0].email, tag)
    assert pipeline.emitter.deliver(ev) == 200
    assert pipeline.emitter.deliver(ev) == 200
    pipeline.settle()
    audits = [a for a in pipeline.topic("audit") if a["correlation_id"] == ev["id"]]
    # The worker took the first delivery to the sink, which created the Task, and dropped
    # the second as a repeat of the event id inside its window (the loop guard)...
    assert sorted((a["target"], a["outcome"]) for a in audits) == [
        ("salesforce", "CREATED"), ("streams", "MATCHED"), ("streams", "SKIPPED")]
    assert "repeat of event" in next(a["error"] for a in audits if a["outcome"] == "SKIPPED")
    # ...so there is one Task.
    tasks = [t for t in pipeline.tasks() if t.get("Front_Message_Id__c") == f"msg_{tag}0"]
    assert len(tasks) == 1
    assert [a["record_id"] for a in audits if a["target"] == "salesforce"] == [tasks[0]["Id"]]


def test_bad_signature_and_stale_timestamp_get_401_and_nothing_reaches_kafka(pipeline: Pipeline) -> None:
    tag = uuid.uuid4().hex[:6]
    url = pipeline.stack.receiver_url
    forged = pipeline.emitter.envelope(event(KNOWN[1].email, tag, 1))
    now = str(int(time.time() * 1000))
    r = httpx.post(url, content=forged, headers={"x-front-request-timestamp": now,
                                                 "x-front-signature": sign_app(b"wrong", now, forged)})
    assert r.status_code == 401
    stale_body = pipeline.emitter.envelope(event(KNOWN[1].email, tag, 2))
    old = str(int((time.time() - 600) * 1000))
    r = httpx.post(url, content=stale_body, headers={
        "x-front-request-timestamp": old,
        "x-front-signature": sign_app(pipeline.stack.app_secret.encode(), old, stale_body)})
    assert r.status_code == 401
    r = httpx.post(url, content=stale_body)
    assert r.status_code == 401
    # A good one afterwards proves the reader below does see new records.
    assert pipeline.emitter.deliver(event(KNOWN[1].email, tag, 3)) == 200
    ids = {e["event_id"] for e in pipeline.topic("front.events")}
    assert f"evt_{tag}3" in ids
    assert f"evt_{tag}1" not in ids and f"evt_{tag}2" not in ids


def test_rule_webhook_signed_with_sha1_becomes_a_task(pipeline: Pipeline) -> None:
    """Rule webhooks carry the bare event and an HMAC-SHA1 signature, no timestamp."""
    tag = uuid.uuid4().hex[:6]
    rules_url = pipeline.stack.receiver_url + "/rules"
    emitter = WebhookEmitter(rules_url, pipeline.stack.rule_secret.encode(), kind="rule")
    assert emitter.deliver(event(KNOWN[4].email, tag)) == 200
    [task] = pipeline.tasks_for({f"msg_{tag}0"}, expect=1)
    assert task["WhoId"] == pipeline.contact_ids[KNOWN[4].email]
    forged = WebhookEmitter(rules_url, b"not-the-secret", kind="rule", retries=0)
    assert forged.deliver(event(KNOWN[4].email, tag, 1)) == 401
    assert f"evt_{tag}1" not in {e["event_id"] for e in pipeline.topic("front.events")}


def test_malformed_bodies_get_clear_4xx(pipeline: Pipeline) -> None:
    secret = pipeline.stack.app_secret.encode()

    def post(body: bytes) -> httpx.Response:
        ts = str(int(time.time() * 1000))
        return httpx.post(pipeline.stack.receiver_url, content=body, headers={
            "x-front-request-timestamp": ts, "x-front-signature": sign_app(secret, ts, body)})

    assert post(b"not json").status_code == 400
    r = post(json.dumps({"type": "inbound_received", "payload": {"type": "inbound"}}).encode())
    assert r.status_code == 422 and "id" in r.json()["error"]


def test_challenge_handshake_echoes_and_produces_nothing(pipeline: Pipeline) -> None:
    before = len(pipeline.topic("front.events"))
    challenge = pipeline.emitter.register()
    assert challenge
    assert len(pipeline.topic("front.events")) == before


def test_front_events_are_wire_format_and_decode_with_an_independent_consumer(pipeline: Pipeline) -> None:
    """Any Kafka tool with a registry client must be able to read our topics."""
    from confluent_kafka import Consumer

    tag = uuid.uuid4().hex[:6]
    ev = event(KNOWN[2].email, tag)
    assert pipeline.emitter.deliver(ev) == 200
    c = Consumer({"bootstrap.servers": pipeline.stack.bootstrap, "group.id": f"raw-{tag}",
                  "auto.offset.reset": "earliest"})
    c.subscribe([f"{pipeline.stack.topic_prefix}front.events"])
    raw = None
    deadline = time.monotonic() + 30
    while raw is None and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and not m.error() and m.key() == f"cnv_{tag}0".encode():
            raw = m.value()
    c.close()
    assert raw is not None and raw[0] == 0
    schema_id = struct.unpack(">I", raw[1:5])[0]
    served = httpx.get(f"{pipeline.stack.registry_url}/schemas/ids/{schema_id}").json()
    assert json.loads(served["schema"])["name"] == "FrontEvent"
    decoded = [e for e in pipeline.topic("front.events") if e["event_id"] == ev["id"]]
    assert len(decoded) == 1
    rec = decoded[0]
    assert rec["event_type"] == "INBOUND_MESSAGE"
    assert rec["message"]["id"] == f"msg_{tag}0"
    assert rec["conversation_id"] == f"cnv_{tag}0"


def test_unknown_sender_gets_one_lead_its_messages_logged_on_it_and_a_new_lead_tag(
        pipeline: Pipeline) -> None:
    """Use case 2: messages from a sender no Contact or Lead has, in two conversations,
    make one Lead (Front_Handle__c = the email), each message a Task on it (named by
    external id: no query), and one AddTags "New Lead" command per conversation for the
    Front sink. A re-delivered webhook changes nothing."""
    tag = uuid.uuid4().hex[:6]
    stranger = STRANGERS[0].email
    pipeline.front_conversations(f"cnv_{tag}0", f"cnv_{tag}1")
    for i in range(2):
        assert pipeline.emitter.deliver(event(stranger, tag, i)) == 200
    assert pipeline.emitter.deliver(event(stranger, tag, 0)) == 200  # Front retried
    tasks = pipeline.tasks_for({f"msg_{tag}0", f"msg_{tag}1"}, expect=2)
    pipeline.settle()
    r = pipeline.admin.get("/__admin/records/Lead")
    r.raise_for_status()
    leads = [row for row in r.json()["records"] if row.get("Front_Handle__c") == stranger]
    assert len(leads) == 1 and leads[0]["Email"] == stranger
    assert len(tasks) == 2 and {t["WhoId"] for t in tasks} == {leads[0]["Id"]}
    tags = [c for c in pipeline.topic("commands.front")
            if c["origin"]["correlation_id"].startswith(f"evt_{tag}")]
    assert sorted(c["operation"]["conversation_id"] for c in tags) == sorted(
        [f"cnv_{tag}0", f"cnv_{tag}1"])  # the retry is a repeat: dropped by the worker
    assert {tuple(c["operation"]["tag_names"]) for c in tags} == {("New Lead",)}
    assert len({c["idempotency_key"] for c in tags}) == 2
    # ...and Front shows the tag once on each conversation (the Front sink's ledger).
    assert [pipeline.front_state(f"cnv_{tag}{i}")["tags"] for i in range(2)] == [["New Lead"]] * 2
    assert not [d for d in pipeline.topic("deadletter")
                if d["original_key"] and stranger.encode() in d["original_key"]]
    # The worker's line for the Lead carries the Front event's id as its correlation id,
    # like the receiver's and the sinks' lines (one id joins the whole way).
    lines = [json.loads(line[line.index("{"):])  # after Faust's "[time] [pid] [LEVEL] "
             for line in (pipeline.stack.logs / "worker.log").read_text().splitlines()
             if "{" in line and f"evt_{tag}" in line]
    assert sorted(x["correlation_id"] for x in lines if x.get("event") == "unknown sender: lead") == [
        f"evt_{tag}0", f"evt_{tag}1"], lines


def test_a_message_waits_for_a_contact_created_moments_later_instead_of_making_a_lead(
        pipeline: Pipeline) -> None:
    """A sender whose Contact is created a moment after their message (or whose record is
    still loading on a cold start) is not an unknown sender: the message waits (bounded by
    worker.unmatched_wait_s, 8 s here) in a table, lands on the Contact when its change event
    is indexed, and no Lead is made. One that stays unknown becomes a Lead after the wait."""
    tag = uuid.uuid4().hex[:6]
    late = f"late-{tag}@corp.example"
    pipeline.front_conversations(f"cnv_{tag}0")
    assert pipeline.emitter.deliver(event(late, tag, 0)) == 200
    # The Contact is made once the message waits (the table holds it): made sooner, it could
    # be indexed before the fast lane's batch reads the message, which then simply matches.
    changelog = pipeline.stack.settings().worker_table_topics["waiting_table"]
    deadline = time.monotonic() + 60
    while not [m for m in read_to_end(pipeline.stack.bootstrap, changelog)
               if late.encode() in (m.key() or b"") and m.value() is not None]:
        assert time.monotonic() < deadline, "the message never waited"
        time.sleep(0.2)
    r = pipeline.admin.post("/__admin/seed", json={"records": {"Contact": [
        {"LastName": "Late", "Email": late}]}})
    r.raise_for_status()
    [contact] = r.json()["ids"]["Contact"]
    [task] = pipeline.tasks_for({f"msg_{tag}0"}, expect=1)
    assert task["WhoId"] == contact
    pipeline.settle()
    leads = [row for row in pipeline.admin.get("/__admin/records/Lead").json()["records"]
             if row.get("Email") == late]
    assert leads == []
    # The released entry is purged after worker.waiting_purge_s (10 s here): its key gets a
    # tombstone in the table's changelog, so waiting state does not grow for ever.
    deadline = time.monotonic() + 60
    while not [m for m in read_to_end(pipeline.stack.bootstrap, changelog)
               if late.encode() in (m.key() or b"") and m.value() is None]:
        assert time.monotonic() < deadline, "the released waiting entry was never purged"
        time.sleep(1)


def test_every_external_participant_of_a_message_gets_its_task_with_all_participants(
        pipeline: Pipeline) -> None:
    """worker.all_participants (on here): an outbound email to one Contact, copying another
    Contact and a stranger, is logged once on each Contact (the first participant's Task keyed
    by the message id, the others' by message id and handle); the stranger of an outbound
    message makes no Lead (only an inbound sender does) and is audited SKIPPED."""
    tag = uuid.uuid4().hex[:6]
    to, cc = KNOWN[3].email, KNOWN[4].email
    stranger = f"someone-{tag}@gmail.com"
    pipeline.front_conversations(f"cnv_{tag}0")
    out = event(to, tag, 0)
    out["type"] = "outbound"
    msg = out["target"]["data"]
    msg.update(is_inbound=False, author={"id": "tea_jim", "email": "jim@acme.example"})
    msg["recipients"] = [{"handle": "support@acme.example", "role": "from", "name": "Support"},
                         {"handle": to, "role": "to", "name": None},
                         {"handle": cc.upper(), "role": "cc", "name": None},
                         {"handle": stranger, "role": "cc", "name": None},
                         {"handle": "boss@acme.example", "role": "bcc", "name": None}]
    assert pipeline.emitter.deliver(out) == 200
    ids = {f"msg_{tag}0", f"msg_{tag}0/email:{cc}", f"msg_{tag}0/email:{stranger}"}
    tasks = {t["Front_Message_Id__c"]: t["WhoId"] for t in pipeline.tasks_for(ids, expect=2)}
    assert tasks == {f"msg_{tag}0": pipeline.contact_ids[to],
                     f"msg_{tag}0/email:{cc}": pipeline.contact_ids[cc]}
    deadline = time.monotonic() + 60
    while not [a for a in pipeline.topic("audit") if a["correlation_id"] == f"evt_{tag}0"
               and a["outcome"] == "SKIPPED" and stranger in (a["error"] or "")]:
        assert time.monotonic() < deadline, "the stranger's handle was never audited"
        time.sleep(1)
    pipeline.settle()
    assert {t["Front_Message_Id__c"] for t in pipeline.tasks()} & ids == set(tasks)
    leads = [row for row in pipeline.admin.get("/__admin/records/Lead").json()["records"]
             if row.get("Email") == stranger]
    assert leads == []


def test_a_known_persons_new_phone_lands_on_their_contact_and_is_added_to_it_once(
        pipeline: Pipeline) -> None:
    """Use case 2, a known person: Front says which Front contact a handle belongs to
    (``_links.related.contact``). An SMS from a number no record has, from the Front contact
    whose email matched a Contact, lands on that Contact (no Lead) and the number is written
    to its blank Phone, once; the next SMS from it matches by phone. A second new number
    finds no blank field it may fill (MobilePhone is in privacy.exclude_fields here): it lands
    on the Contact and is not written anywhere. Once the Contact is deleted, the Front contact
    no longer leads to it."""
    tag = uuid.uuid4().hex[:6]
    email = f"dana-{tag}@initech.example"
    r = pipeline.admin.post("/__admin/seed", json={"records": {"Contact": [
        {"LastName": "Dana", "Email": email}]}})
    r.raise_for_status()
    [dana] = r.json()["ids"]["Contact"]
    wait_changes(pipeline, {dana})
    link = f"https://acme.api.frontapp.com/contacts/crd_{tag}"
    new, other = "+14155550" + str(100 + int(tag[:2], 16)), "+14155551" + str(100 + int(tag[:2], 16))

    def message(handle: str, i: int) -> dict[str, Any]:
        return front_contact_message(handle, tag, i, link)

    assert pipeline.emitter.deliver(message(email, 0)) == 200
    assert [t["WhoId"] for t in pipeline.tasks_for({f"msg_{tag}0"}, expect=1)] == [dana]
    assert pipeline.emitter.deliver(message(new, 1)) == 200
    assert [t["WhoId"] for t in pipeline.tasks_for({f"msg_{tag}1"}, expect=1)] == [dana]

    def contact() -> dict[str, Any]:
        rows = pipeline.admin.get("/__admin/records/Contact").json()["records"]
        return next(row for row in rows if row["Id"] == dana)

    deadline = time.monotonic() + 60
    while contact().get("Phone") != new:
        assert time.monotonic() < deadline, f"the new number never reached the Contact: {contact()}"
        time.sleep(0.5)
    wait_changes(pipeline, {dana})
    assert pipeline.emitter.deliver(message(new, 2)) == 200
    assert pipeline.emitter.deliver(message(other, 3)) == 200
    tasks = pipeline.tasks_for({f"msg_{tag}2", f"msg_{tag}3"}, expect=2)
    assert sorted(t["WhoId"] for t in tasks) == [dana, dana]
    pipeline.settle()
    assert (contact()["Phone"], contact().get("MobilePhone")) == (new, None)
    leads = [row for row in pipeline.admin.get("/__admin/records/Lead").json()["records"]
             if row.get("Phone") in (new, other) or row.get("Email") == email]
    assert leads == []
    updates = [c["operation"] for c in pipeline.topic("commands.salesforce")
               if c["operation"].get("record_id") == dana]
    assert [u["fields"] for u in updates] == [{"Phone": new}]
    why = {a["correlation_id"]: a for a in pipeline.topic("audit")
           if a["operation"] == "Match" and a["correlation_id"].startswith(f"evt_{tag}")}
    assert f"Front contact crd_{tag} is Contact {dana}" in why[f"evt_{tag}1"]["reason"]
    assert why[f"evt_{tag}2"]["reason"].startswith(f"phone:{new}: Contact")
    assert why[f"evt_{tag}3"]["record_id"] == dana

    # Dana's Contact is deleted in Salesforce. A message from a handle no record has, from
    # the same Front contact, no longer lands on her through that Front contact (no Task on
    # a deleted record, no handle written to it): she is an unknown sender now, a Lead.
    from frontforce.salesforce import connect

    connect(pipeline.stack.settings().salesforce).client.Contact.delete(dana)
    deadline = time.monotonic() + 60
    while not [c for c in pipeline.topic("salesforce.changes")
               if c["record_id"] == dana and c["change_type"] == "DELETE"]:
        assert time.monotonic() < deadline, "no DELETE change event for the Contact"
        time.sleep(0.5)
    pipeline.settle()
    later = f"dana.new-{tag}@initech.example"
    assert pipeline.emitter.deliver(message(later, 4)) == 200
    [task] = pipeline.tasks_for({f"msg_{tag}4"}, expect=1)
    [lead] = [row for row in pipeline.admin.get("/__admin/records/Lead").json()["records"]
              if row.get("Email") == later]
    assert task["WhoId"] == lead["Id"]
    pipeline.settle()
    assert [c["operation"]["fields"] for c in pipeline.topic("commands.salesforce")
            if c["operation"].get("record_id") == dana] == [{"Phone": new}]


def front_contact_message(handle: str, tag: str, i: int, link: str) -> dict[str, Any]:
    """An inbound message from ``handle`` that Front links to the Front contact ``link``;
    an SMS when the handle is a phone number."""
    ev = event(handle, tag, i)
    ev["target"]["data"]["recipients"][0]["_links"]["related"]["contact"] = link
    if handle.startswith("+"):
        ev["target"]["data"]["type"] = "sms"
        ev["target"]["data"]["recipients"][1]["handle"] = "+14155550000"
    return ev


def status_event(kind: str, conversation: str, event_id: str, at: float) -> dict[str, Any]:
    """Front's ``archive`` / ``reopen`` event of a conversation, done by a teammate."""
    return {"_links": {"self": f"https://acme.api.frontapp.com/events/{event_id}"},
            "id": event_id, "type": kind, "emitted_at": at,
            "source": {"_meta": {"type": "teammate"},
                       "data": {"id": "tea_1", "email": "ann@acme.example"}},
            "target": None,
            "conversation": {"id": conversation, "type": "conversation", "subject": "Broken login",
                             "status": "archived" if kind == "archive" else "assigned"}}


def test_archived_conversation_closes_its_case_with_a_note_and_the_newest_event_wins(
        pipeline: Pipeline) -> None:
    """Use case 6: archiving a Front conversation closes the Case linked to it
    (Front_Conversation_Id__c) and posts the resolution note on the Case; a reopen that
    happened before the archive but arrives after it changes nothing (Front's event time
    decides, not the order of delivery); a later reopen reopens the Case, and an archive
    older than that reopen arriving after it still posts its note and leaves the Case
    reopened. A conversation with no Case is audited SKIPPED, never dead-lettered."""
    tag = uuid.uuid4().hex[:6]
    conversation = f"cnv_{tag}c"
    pipeline.front_conversations(conversation)
    seeded = pipeline.admin.post("/__admin/seed", json={"records": {"Case": [
        {"Subject": "Broken login", "Front_Conversation_Id__c": conversation}]}})
    seeded.raise_for_status()
    case = seeded.json()["ids"]["Case"][0]

    def case_row() -> dict[str, Any]:
        r = pipeline.admin.get("/__admin/records/Case")
        r.raise_for_status()
        return next(c for c in r.json()["records"] if c["Id"] == case)

    now = time.time()

    def deliver(kind: str, conv: str, event_id: str, at: float) -> int:
        envelope = "conversation_archived" if kind == "archive" else "conversation_reopened"
        return pipeline.emitter.deliver(status_event(kind, conv, event_id, at), kind=envelope)

    assert deliver("archive", conversation, f"evt_{tag}a", now) == 200
    assert deliver("reopen", conversation, f"evt_{tag}r0", now - 60) == 200
    assert deliver("archive", f"cnv_{tag}none", f"evt_{tag}n", now) == 200
    pipeline.settle()
    assert case_row()["Status"] == "Closed"
    r = pipeline.admin.get("/__admin/records/FeedItem")
    r.raise_for_status()
    notes = [f for f in r.json()["records"] if f["ParentId"] == case]
    assert len(notes) == 1 and "archived by ann@acme.example" in notes[0]["Body"]
    audit = {a["correlation_id"]: a for a in pipeline.topic("audit")
             if a["correlation_id"].startswith(f"evt_{tag}")}
    assert audit[f"evt_{tag}r0"]["outcome"] == "SKIPPED" and "older" in (audit[f"evt_{tag}r0"]["error"] or "")
    assert audit[f"evt_{tag}n"]["outcome"] == "SKIPPED" and "no Case" in (audit[f"evt_{tag}n"]["error"] or "")
    assert deliver("reopen", conversation, f"evt_{tag}r1", now + 60) == 200
    pipeline.settle()
    assert case_row()["Status"] == "Working"
    # Archived before that reopen, delivered after it (a retried webhook): the archive's
    # resolution note is posted, the Case stays reopened.
    assert deliver("archive", conversation, f"evt_{tag}a1", now + 30) == 200
    pipeline.settle()
    r = pipeline.admin.get("/__admin/records/FeedItem")
    r.raise_for_status()
    notes = [f for f in r.json()["records"] if f["ParentId"] == case]
    assert len(notes) == 2 and case_row()["Status"] == "Working", (notes, case_row())
    # Our own Case updates came back through Change Data Capture (both status changes are
    # on salesforce.changes, marked ours by changeOrigin): no comment echoes them into Front.
    deadline = time.monotonic() + 60
    while len([c for c in pipeline.topic("salesforce.changes")
               if c["record_id"] == case and "Status" in (c["changed_fields"] or [])
               and "client=frontforce" in (c["change_origin"] or "")]) < 2:
        assert time.monotonic() < deadline, "our Case updates never came back as change events"
        time.sleep(0.5)
    pipeline.settle()
    assert pipeline.front_state(conversation)["comments"] == []
    assert not [d for d in pipeline.topic("deadletter") if d["original_key"] and tag.encode() in d["original_key"]]


def test_a_case_status_changed_in_salesforce_is_a_comment_on_its_conversation_once(
        pipeline: Pipeline) -> None:
    """Use case 7, through Change Data Capture: a person changes a linked Case's status in
    Salesforce; the linked Front conversation gets one internal comment saying so, posted
    once by the Front sink."""
    from frontforce.salesforce import connect

    tag = uuid.uuid4().hex[:6]
    conversation = f"cnv_{tag}s"
    pipeline.front_conversations(conversation)
    person = connect(pipeline.stack.settings().salesforce).client
    person.headers.pop("Sforce-Call-Options", None)  # a person in the UI, not frontforce
    made = person.restful("sobjects/Case", method="POST", json={
        "Subject": "Refund", "Front_Conversation_Id__c": conversation})
    assert made is not None
    case = made["id"]
    time.sleep(1)  # the link reaches the worker first (separate transactions)
    person.restful(f"sobjects/Case/{case}", method="PATCH", json={"Status": "Escalated"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not pipeline.front_state(conversation)["comments"]:
        time.sleep(0.5)
    pipeline.settle()
    comments = pipeline.front_state(conversation)["comments"]
    # (a change event carries the changed fields only: the status, not the subject)
    assert len(comments) == 1 and f"Salesforce Case {case} is now Escalated." in comments[0]


def test_matching_follows_a_contacts_email_change_and_delete_through_change_data_capture(
        pipeline: Pipeline) -> None:
    """The match table converges to Salesforce through change events that carry only what
    changed: after a Contact's email changes, a message from the new address lands on it
    and one from the old address is an unknown sender's; after the Contact is deleted (its
    change event carries no email), its address matches nothing any more."""
    from frontforce.salesforce import connect

    tag = uuid.uuid4().hex[:6]
    old, new = f"old-{tag}@corp.example", f"new-{tag}@corp.example"
    person = connect(pipeline.stack.settings().salesforce).client
    person.headers.pop("Sforce-Call-Options", None)
    made = person.restful("sobjects/Contact", method="POST", json={"LastName": "Moved", "Email": old})
    assert made is not None
    contact = made["id"]

    def logged(i: int, sender: str) -> dict[str, Any]:
        assert pipeline.emitter.deliver(event(sender, tag, i)) == 200
        [task] = pipeline.tasks_for({f"msg_{tag}{i}"}, expect=1)
        return task

    def changed(kind: str) -> None:
        """Wait until the change event is on salesforce.changes, then until the worker
        has taken it in (Change Data Capture is asynchronous)."""
        deadline = time.monotonic() + 60
        while not [c for c in pipeline.topic("salesforce.changes")
                   if c["record_id"] == contact and c["change_type"] == kind]:
            assert time.monotonic() < deadline, f"no {kind} change event for {contact}"
            time.sleep(0.5)
        pipeline.settle()

    changed("CREATE")
    assert logged(0, old)["WhoId"] == contact
    person.restful(f"sobjects/Contact/{contact}", method="PATCH", json={"Email": new})
    changed("UPDATE")
    assert logged(1, new)["WhoId"] == contact
    assert str(logged(2, old)["WhoId"]).startswith("00Q")  # the old address: a new Lead
    person.restful(f"sobjects/Contact/{contact}", method="DELETE")
    changed("DELETE")
    assert str(logged(3, new)["WhoId"]).startswith("00Q")


def wait_changes(pipeline: Pipeline, record_ids: set[str], timeout: float = 60) -> None:
    """Until a change event of each record is on salesforce.changes and the worker has taken
    them in (Change Data Capture is asynchronous)."""
    deadline = time.monotonic() + timeout
    while record_ids - {c["record_id"] for c in pipeline.topic("salesforce.changes")}:
        assert time.monotonic() < deadline, f"no change events for {record_ids}"
        time.sleep(0.5)
    pipeline.settle()


def test_owner_routing_and_matching_by_domain_and_phone(pipeline: Pipeline) -> None:
    """Use cases 1 and 5 and the matching rules beyond email, from Salesforce's change
    events alone (no lookup): an unassigned conversation from a Contact goes to the Front
    teammate who owns the Contact's Account; a Task's owner is the Salesforce User of the
    teammate (the assignee of an inbound message, the author of an outbound one); a sender
    no Contact or Lead has lands on the Account of their work domain (no Lead), a free-mail
    one becomes a Lead; an SMS from a number written differently in Salesforce lands on its
    Contact. The audit topic says which record each message landed on and why."""
    tag = uuid.uuid4().hex[:6]
    domain = f"globex-{tag}.example"
    r = pipeline.admin.post("/__admin/seed", json={"records": {
        "User": [{"Email": "pam@acme.example", "Username": f"pam-{tag}@acme.example",
                  "FirstName": "Pam", "LastName": "Beesly"},
                 {"Email": "jim@acme.example", "Username": f"jim-{tag}@acme.example",
                  "FirstName": "Jim", "LastName": "Halpert"}],
        "Account": [{"Name": "Globex", "Website": f"https://www.{domain}/", "OwnerId": "@User[0]"}],
        "Contact": [{"LastName": "Carla", "Email": f"carla@{domain}", "AccountId": "@Account[0]",
                     "Phone": "(415) 555-0142"}]}})
    r.raise_for_status()
    ids = r.json()["ids"]
    (pam, jim), [account], [carla] = ids["User"], ids["Account"], ids["Contact"]
    wait_changes(pipeline, {pam, jim, account, carla})
    pipeline.front_conversations(*(f"cnv_{tag}{i}" for i in range(6)))
    r = pipeline.front.post("/__admin/seed", json={"teammates": [
        {"email": "pam@acme.example", "first_name": "Pam", "last_name": "Beesly"},
        {"email": "jim@acme.example", "first_name": "Jim", "last_name": "Halpert"}]})
    assert r.status_code == 200, r.text

    # 0: unassigned, from Carla -> Task on Carla and her Account, the conversation to Pam.
    assert pipeline.emitter.deliver(event(f"carla@{domain}", tag, 0)) == 200
    # 1: assigned to Jim -> the Task is Jim's; no routing (somebody has it already).
    assigned = event(f"carla@{domain}", tag, 1)
    assigned["conversation"]["assignee"] = {"id": "tea_jim", "email": "jim@acme.example"}
    assert pipeline.emitter.deliver(assigned) == 200
    # 2: Jim replies -> the outbound message's Task is Jim's (its author).
    reply = event(f"carla@{domain}", tag, 2)
    reply["type"] = "out_reply"
    msg = reply["target"]["data"]
    msg.update(is_inbound=False, author={"id": "tea_jim", "email": "jim@acme.example"})
    msg["recipients"] = [{"handle": "support@acme.example", "role": "from", "name": "Support"},
                         {"handle": f"carla@{domain}", "role": "to", "name": None}]
    assert pipeline.emitter.deliver(reply) == 200
    # 3: a colleague of Carla's nobody knows -> on the Account by domain, no Lead.
    assert pipeline.emitter.deliver(event(f"newbie@{domain}", tag, 3)) == 200
    # 4: a free-mail stranger -> a Lead, never an Account by domain.
    assert pipeline.emitter.deliver(event(f"stranger-{tag}@gmail.com", tag, 4)) == 200
    # 5: an SMS from Carla's number as Front writes it (E.164).
    sms = event("+14155550142", tag, 5)
    sms["target"]["data"]["type"] = "sms"
    sms["target"]["data"]["recipients"][1]["handle"] = "+14155550000"
    assert pipeline.emitter.deliver(sms) == 200

    tasks = {t["Front_Message_Id__c"]: t for t in
             pipeline.tasks_for({f"msg_{tag}{i}" for i in range(6)}, expect=6)}
    assert len(tasks) == 6
    t = [tasks[f"msg_{tag}{i}"] for i in range(6)]
    assert (t[0]["WhoId"], t[0]["WhatId"]) == (carla, account)
    assert t[0]["OwnerId"] not in (pam, jim)  # unassigned: Salesforce's default owner
    assert t[1]["OwnerId"] == jim and t[2]["OwnerId"] == jim
    assert (t[3]["WhoId"], t[3]["WhatId"]) == (None, account)
    assert str(t[4]["WhoId"]).startswith("00Q")
    assert t[5]["WhoId"] == carla
    pipeline.settle()
    assert pipeline.front_state(f"cnv_{tag}0")["assignee"] == "pam@acme.example"
    assert pipeline.front_state(f"cnv_{tag}1")["assignee"] is None  # not ours to route
    leads = [row for row in pipeline.admin.get("/__admin/records/Lead").json()["records"]
             if str(row.get("Email") or "").endswith(domain)]
    assert leads == []
    why = {a["correlation_id"]: a for a in pipeline.topic("audit")
           if a["operation"] == "Match" and a["correlation_id"].startswith(f"evt_{tag}")}
    assert why[f"evt_{tag}3"]["outcome"] == "MATCHED" and why[f"evt_{tag}3"]["record_id"] == account
    assert why[f"evt_{tag}3"]["reason"].startswith(f"domain:{domain}: Account")
    assert why[f"evt_{tag}5"]["reason"].startswith("phone:+14155550142: Contact")
    assert why[f"evt_{tag}0"]["reason"] == f"email:carla@{domain}: Contact"


def test_salesforce_context_reaches_front_accounts_and_contacts_within_seconds(
        pipeline: Pipeline) -> None:
    """Use case 3, from change events alone: a Salesforce Account becomes a Front account
    (external id = the Account Id) with ARR, tier, owner and open opportunities in its
    custom fields and its Contact linked; the Contact's Front contact carries the same and a
    link to the Contact in Salesforce; an ARR change made in Salesforce reaches both."""
    from frontforce.salesforce import connect

    tag = uuid.uuid4().hex[:6]
    email = f"dora-{tag}@initech.example"
    headers = {"Authorization": f"Bearer {pipeline.stack.front_token}"}
    r = pipeline.front.post("/__admin/seed", json={"contacts": [
        {"name": "Dora", "handles": [{"source": "email", "handle": email}]}]})
    assert r.status_code == 200, r.text
    r = pipeline.admin.post("/__admin/seed", json={"records": {
        "User": [{"Email": f"owner-{tag}@acme.example", "FirstName": "Olga", "LastName": f"Owner{tag}"}],
        "Account": [{"Name": f"Initech {tag}", "Website": f"initech-{tag}.example", "OwnerId": "@User[0]",
                     "AnnualRevenue": 1200000, "Type": "Customer - Direct"}],
        "Contact": [{"LastName": "Dora", "Email": email, "AccountId": "@Account[0]"}],
        "Opportunity": [{"Name": "Renewal", "StageName": "Negotiation/Review", "Amount": 50000,
                         "CloseDate": "2027-01-31", "AccountId": "@Account[0]"},
                        {"Name": "Won", "StageName": "Closed Won", "Amount": 999,
                         "CloseDate": "2026-01-31", "AccountId": "@Account[0]"}]}})
    r.raise_for_status()
    ids = r.json()["ids"]
    [account], [contact] = ids["Account"], ids["Contact"]

    def front_account() -> dict[str, Any] | None:
        got = pipeline.front.get(f"/accounts/alt:ext_id:{account}", headers=headers)
        return got.json() if got.status_code == 200 else None

    acc = wait("the Front account with its opportunity", lambda: (lambda a: a if a and (
        a["custom_fields"].get("Open opportunities", "").startswith("1 open")) else None)(front_account()))
    assert acc["name"] == f"Initech {tag}" and acc["domains"] == [f"initech-{tag}.example"]
    assert acc["custom_fields"] == {"ARR": 1200000, "Tier": "Customer - Direct",
                                    "Account owner": f"Olga Owner{tag}",
                                    "Open opportunities": "1 open, 50,000 (Negotiation/Review)"}
    linked = pipeline.front.get(f"/accounts/{acc['id']}/contacts", headers=headers).json()["_results"]
    assert [h["handle"] for c in linked for h in c["handles"]] == [email]

    def front_contact() -> dict[str, Any]:
        got = pipeline.front.get(f"/contacts/alt:email:{email}", headers=headers)
        return got.json() if got.status_code == 200 else {}

    person = wait("the contact's context", lambda: (lambda c: c if c.get("custom_fields", {}).get(
        "Salesforce account") else None)(front_contact()))
    assert person["custom_fields"]["ARR"] == 1200000
    assert person["custom_fields"]["Account owner"] == f"Olga Owner{tag}"
    assert any(f"/lightning/r/Contact/{contact}/view" in link for link in person.get("links") or [])

    sf = connect(pipeline.stack.settings().salesforce).client
    sf.restful(f"sobjects/Account/{account}", method="PATCH", json={"AnnualRevenue": 2500000})
    changed = time.monotonic()
    wait("the new ARR in Front", lambda: (front_account() or {}).get("custom_fields", {}).get("ARR") == 2500000)
    wait("the new ARR on the contact", lambda: front_contact()["custom_fields"].get("ARR") == 2500000)
    assert time.monotonic() - changed < 30
    # The owner renamed in Salesforce: a User change, which reaches every Account that User
    # owns (the worker finds them by the owns:<User>:<Account> keys' prefix). Its change
    # event carries only the last name (Name.LastName): the name shown is still whole.
    [owner] = ids["User"]
    sf.restful(f"sobjects/User/{owner}", method="PATCH", json={"LastName": f"Renamed{tag}"})
    wait("the owner's new name in Front", lambda: (front_account() or {}).get("custom_fields", {}).get(
        "Account owner") == f"Olga Renamed{tag}")


def test_a_contact_who_writes_in_after_the_context_was_pushed_gets_it_once(
        pipeline: Pipeline) -> None:
    """Use case 3, for a person Front did not know yet: the context of their Account reaches
    Front while Front has no contact for them (skipped: nothing to update). When they write
    in, Front makes a contact; the worker, seeing that Front contact matched to the Contact
    for the first time, pushes the Account's context onto it and links it to the Front
    account, once: a second message pushes nothing more. A colleague whose Front contact
    was there when the context was pushed got it then: their writing in costs no Front
    call on contacts or accounts."""
    tag = uuid.uuid4().hex[:6]
    email = f"eve-{tag}@globex.example"
    known = f"frank-{tag}@globex.example"
    headers = {"Authorization": f"Bearer {pipeline.stack.front_token}"}
    frank = f"crd_{tag}f"
    seeded = pipeline.front.post("/__admin/seed", json={"contacts": [
        {"id": frank, "name": "Frank", "handles": [{"source": "email", "handle": known}]}]})
    assert seeded.status_code == 200, seeded.text
    r = pipeline.admin.post("/__admin/seed", json={"records": {
        "Account": [{"Name": f"Globex {tag}", "Website": f"globex-{tag}.example",
                     "AnnualRevenue": 700000, "Type": "Customer - Channel"}],
        "Contact": [{"LastName": "Eve", "Email": email, "AccountId": "@Account[0]"},
                    {"LastName": "Frank", "Email": known, "AccountId": "@Account[0]"}]}})
    r.raise_for_status()
    [account], [contact, _] = r.json()["ids"]["Account"], r.json()["ids"]["Contact"]

    def get(path: str) -> dict[str, Any] | None:
        got = pipeline.front.get(path, headers=headers)
        return got.json() if got.status_code == 200 else None

    acc = wait("the Front account", lambda: get(f"/accounts/alt:ext_id:{account}"))
    assert acc["custom_fields"]["ARR"] == 700000
    wait("Frank's context", lambda: (get(f"/contacts/{frank}") or {}).get(
        "custom_fields", {}).get("ARR") == 700000)
    pipeline.settle()
    linked = [h["handle"] for c in get(f"/accounts/{acc['id']}/contacts")["_results"]
              for h in c["handles"]]
    assert linked == [known]  # Front has no Eve yet
    assert get(f"/contacts/alt:email:{email}") is None

    # Frank writes in: his context is in Front already, nothing is pushed again.
    requests_before = len(pipeline.front.get("/__admin/requests").json()["requests"])
    ev = event(known, tag, 9)
    ev["target"]["data"]["recipients"][0]["_links"]["related"]["contact"] = (
        f"https://acme.api.frontapp.com/contacts/{frank}")
    assert pipeline.emitter.deliver(ev) == 200
    pipeline.tasks_for({f"msg_{tag}9"}, expect=1)
    pipeline.settle()
    about_people = [f"{x['method']} {x['path']}"
                    for x in pipeline.front.get("/__admin/requests").json()["requests"][requests_before:]
                    if x["path"].startswith(("/contacts", "/accounts"))]
    assert about_people == []

    # Eve writes in: Front makes her contact, and its id is on the message's recipient.
    crd = f"crd_{tag}e"
    seeded = pipeline.front.post("/__admin/seed", json={"contacts": [
        {"id": crd, "name": "Eve", "handles": [{"source": "email", "handle": email}]}]})
    assert seeded.status_code == 200, seeded.text
    requests_before = len(pipeline.front.get("/__admin/requests").json()["requests"])
    for i in range(2):
        ev = event(email, tag, i)
        ev["target"]["data"]["recipients"][0]["_links"]["related"]["contact"] = (
            f"https://acme.api.frontapp.com/contacts/{crd}")
        assert pipeline.emitter.deliver(ev) == 200
        pipeline.tasks_for({f"msg_{tag}{i}"}, expect=1)
    person = wait("Eve's context", lambda: (lambda c: c if c and c.get("custom_fields", {}).get(
        "ARR") == 700000 else None)(get(f"/contacts/{crd}")))
    assert person["custom_fields"]["Salesforce account"] == f"Globex {tag}"
    assert any(f"/lightning/r/Contact/{contact}/view" in link for link in person.get("links") or [])
    wait("Eve linked to the Front account", lambda: sorted(
        h["handle"] for c in get(f"/accounts/{acc['id']}/contacts")["_results"]
        for h in c["handles"]) == sorted([email, known]))
    pipeline.settle()
    writes = [f"{x['method']} {x['path']}"
              for x in pipeline.front.get("/__admin/requests").json()["requests"][requests_before:]
              if x["method"] in ("POST", "PATCH", "PUT") and 200 <= int(x["status"]) < 300]
    assert sorted(writes) == sorted([f"PATCH /contacts/{crd}",
                                     f"POST /accounts/{acc['id']}/contacts"]), writes


def test_card_numbers_are_masked_before_any_topic_and_private_conversations_never_sync(
        pipeline: Pipeline) -> None:
    """Privacy: a card number in a message reaches neither Salesforce nor any topic after
    front.events (the worker's re-key topic, commands, audit); a message in a private
    conversation writes nothing but its SKIPPED audit."""
    tag = uuid.uuid4().hex[:6]
    card = "4111 1111 1111 1111"
    ev = event(KNOWN[0].email, tag, 0)
    ev["target"]["data"]["text"] = f"Please refund my card {card} today"
    ev["conversation"]["subject"] = ev["target"]["data"]["subject"] = f"Refund {card}"
    # Front custom fields: Priority is mapped onto the Task (task_fields_from_front); free
    # text in any of them is masked like the message.
    ev["conversation"]["custom_fields"] = {"Priority": "High", "Notes": f"card {card}"}
    private = event(KNOWN[1].email, tag, 1)
    private["conversation"]["is_private"] = True
    assert pipeline.emitter.deliver(ev) == 200 and pipeline.emitter.deliver(private) == 200
    [task] = pipeline.tasks_for({f"msg_{tag}0"}, expect=1)
    pipeline.settle()
    assert card not in json.dumps(task) and "[masked]" in task["Description"]
    assert "[masked]" in task["Subject"] and task["Priority"] == "High"
    assert not [t for t in pipeline.tasks() if t.get("Front_Message_Id__c") == f"msg_{tag}1"]
    stack = pipeline.stack
    after = [f"{stack.app_id}-front-by-handle", f"{stack.topic_prefix}commands.salesforce",
             f"{stack.topic_prefix}audit", f"{stack.topic_prefix}deadletter"]
    for topic in after:
        raw = [m.value() or b"" for m in read_to_end(stack.bootstrap, topic)]
        assert not [v for v in raw if b"4111 1111 1111 1111" in v], topic
    skipped = [a for a in pipeline.topic("audit") if a["correlation_id"] == f"evt_{tag}1"]
    assert [a["outcome"] for a in skipped] == ["SKIPPED"] and "private" in (skipped[0]["error"] or "")


def test_a_mapped_tag_makes_one_follow_up_task_and_one_note_on_the_person(pipeline: Pipeline) -> None:
    """Use case 4, by the stack's tag rule for "Renewal Risk": tagging a conversation makes a
    follow-up Task on the Contact its recipient matches (and that Contact's Account) and a
    Chatter note on the Account; tagging it again, even after an untag, makes nothing more.
    A tag with no rule does nothing."""
    tag = uuid.uuid4().hex[:6]
    person = KNOWN[2]
    conversation = f"cnv_{tag}t"

    def tag_event(i: int, name: str, kind: str = "tag") -> dict[str, Any]:
        return {"id": f"evt_{tag}t{i}", "type": kind, "emitted_at": time.time(),
                "source": {"_meta": {"type": "teammate"}, "data": {"email": "pam@acme.example"}},
                "target": {"_meta": {"type": "tag"}, "data": {"id": f"tag_{i}", "name": name}},
                "conversation": {"id": conversation, "subject": "Renewal",
                                 "recipient": {"handle": person.email, "role": "from"}}}

    for i, (name, kind) in enumerate([("Renewal Risk", "tag"), ("Other", "tag"),
                                      ("Renewal Risk", "untag"), ("renewal risk", "tag")]):
        envelope = "tag_added" if kind == "tag" else "tag_removed"
        assert pipeline.emitter.deliver(tag_event(i, name, kind), kind=envelope) == 200
    [task] = pipeline.tasks_for({f"tag:{conversation}/renewal risk"}, expect=1)
    pipeline.settle()
    contact = pipeline.contact_ids[person.email]
    assert task["WhoId"] == contact and task["Status"] == "Not Started"
    assert task["Subject"] == "Call the customer about the renewal risk"
    assert len([t for t in pipeline.tasks() if conversation in str(t.get("Front_Message_Id__c"))]) == 1
    r = pipeline.admin.get("/__admin/records/FeedItem")
    r.raise_for_status()
    notes = [f for f in r.json()["records"] if conversation in f["Body"]]
    assert len(notes) == 1 and notes[0]["ParentId"] == task["WhatId"]


def upsell(pipeline: Pipeline, event_id: str, conversation: str, email: str, kind: str) -> None:
    """Pam adds ("tag") or removes ("untag") the "Upsell" tag (the stack's stage rule) on a
    conversation from ``email``, delivered as Front's signed webhook."""
    ev = {"id": event_id, "type": kind, "emitted_at": time.time(),
          "source": {"_meta": {"type": "teammate"}, "data": {"email": "pam@acme.example"}},
          "target": {"_meta": {"type": "tag"}, "data": {"id": "tag_upsell", "name": "Upsell"}},
          "conversation": {"id": conversation, "subject": "More seats",
                           "recipient": {"handle": email, "role": "from"}}}
    envelope = "tag_added" if kind == "tag" else "tag_removed"
    assert pipeline.emitter.deliver(ev, kind=envelope) == 200


def opportunity_stage(pipeline: Pipeline, opp: str) -> str:
    rows = pipeline.admin.get("/__admin/records/Opportunity").json()["records"]
    return str(next(o["StageName"] for o in rows if o["Id"] == opp))


def run_worker_variant(pipeline: Pipeline, module: str) -> None:
    """The worker replaced by a deliberately broken variant (``python -m module``), once its
    fast lane runs (the caller starts the product's worker again when done)."""
    path = pipeline.stack.logs / "worker.log"

    def started() -> int:
        return path.read_text(errors="replace").count('"fast lane started"') if path.exists() else 0

    before = started()
    pipeline.stack.stop_process("worker")
    pipeline.stack.spawn("worker", "worker", module=module)
    wait("the variant's fast lane", lambda: started() > before, timeout=180)


def account_at_qualification(pipeline: Pipeline, company: str, person: str, email: str,
                             amount: int) -> tuple[str, str, Any]:
    """A new Account with one Contact (``email``) and one open Opportunity of ``amount`` at
    Qualification, once Front shows it; its Id, the Opportunity's, and a function that reads
    the "Open opportunities" Front shows on it."""
    headers = {"Authorization": f"Bearer {pipeline.stack.front_token}"}
    r = pipeline.admin.post("/__admin/seed", json={"records": {
        "Account": [{"Name": company}],
        "Contact": [{"LastName": person, "Email": email, "AccountId": "@Account[0]"}],
        "Opportunity": [{"Name": f"{company} deal", "StageName": "Qualification", "Amount": amount,
                         "CloseDate": "2027-01-31", "AccountId": "@Account[0]"}]}})
    r.raise_for_status()
    ids = r.json()["ids"]
    [account], [opp] = ids["Account"], ids["Opportunity"]

    def shown() -> str:
        got = pipeline.front.get(f"/accounts/alt:ext_id:{account}", headers=headers)
        return str(got.json()["custom_fields"].get("Open opportunities")) if got.status_code == 200 else ""

    wait("the Front account at Qualification", lambda: shown() == f"1 open, {amount:,} (Qualification)")
    return account, opp, shown


def test_a_stage_tag_moves_the_open_opportunity_once_and_its_removal_reverts_it(
        pipeline: Pipeline) -> None:
    """Use case 4, by the stack's rule for "Upsell" (stage Proposal/Price Quote, revert on
    untag): the tag moves the Account's open Opportunity that closes first, never the
    other; the same tag added again (a second event) does not move it a second time, even
    after a person moved it meanwhile; removing the tag puts back the stage it had before."""
    from frontforce.salesforce import connect

    tag = uuid.uuid4().hex[:6]
    email = f"erin-{tag}@vandelay.example"
    conversation = f"cnv_{tag}u"
    r = pipeline.admin.post("/__admin/seed", json={"records": {
        "Account": [{"Name": f"Vandelay {tag}"}],
        "Contact": [{"LastName": "Erin", "Email": email, "AccountId": "@Account[0]"}],
        "Opportunity": [{"Name": "First", "StageName": "Qualification", "CloseDate": "2027-01-31",
                         "AccountId": "@Account[0]"},
                        {"Name": "Later", "StageName": "Prospecting", "CloseDate": "2027-06-30",
                         "AccountId": "@Account[0]"}]}})
    r.raise_for_status()
    ids = r.json()["ids"]
    first, later = ids["Opportunity"]
    wait_changes(pipeline, {*ids["Account"], *ids["Contact"], first, later})

    def stage(opp: str) -> str:
        rows = pipeline.admin.get("/__admin/records/Opportunity").json()["records"]
        return str(next(o["StageName"] for o in rows if o["Id"] == opp))

    def wait_stage(opp: str, want: str) -> None:
        deadline = time.monotonic() + 60
        while stage(opp) != want:
            assert time.monotonic() < deadline, f"{opp} is {stage(opp)}, not {want}"
            time.sleep(0.5)

    def tag_event(i: int, kind: str) -> None:
        upsell(pipeline, f"evt_{tag}u{i}", conversation, email, kind)

    tag_event(0, "tag")
    wait_stage(first, "Proposal/Price Quote")
    assert stage(later) == "Prospecting"
    person = connect(pipeline.stack.settings().salesforce).client
    person.headers.pop("Sforce-Call-Options", None)
    person.restful(f"sobjects/Opportunity/{first}", method="PATCH", json={"StageName": "Negotiation/Review"})
    deadline = time.monotonic() + 60
    while not [c for c in pipeline.topic("salesforce.changes")
               if c["record_id"] == first and c.get("stage_name") == "Negotiation/Review"]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    tag_event(1, "tag")  # added again: no second effect
    pipeline.settle()
    assert stage(first) == "Negotiation/Review"
    tag_event(2, "untag")
    wait_stage(first, "Qualification")
    assert stage(later) == "Prospecting"


def test_corrupt_records_go_to_deadletter_and_the_next_ones_are_processed(pipeline: Pipeline) -> None:
    """A poison record must not stop the worker or the sink, and must not be lost. A Front
    event's dead letter is after front.events too: a card number in an undecodable record
    is masked in place (the same bytes otherwise, the same length)."""
    from confluent_kafka import Producer

    from frontforce.kafka import read_to_end

    tag = uuid.uuid4().hex[:6]
    p = Producer({"bootstrap.servers": pipeline.stack.bootstrap})
    prefix = pipeline.stack.topic_prefix
    garbage = b"\x01not avro at all " + tag.encode()
    unknown_id = b"\x00" + struct.pack(">I", 987654) + b"\x02xx"
    card = b"4111 1111 1111 1111"
    # Letters after the card number: digits of the tag after it could make a longer run
    # that passes the Luhn check (and is masked with it, rightly).
    carded = b"\x00" + struct.pack(">I", 987655) + b"\x02refund " + card + b" ref " + tag.encode()
    p.produce(f"{prefix}front.events", key=f"cnv_{tag}k".encode(), value=carded)
    p.produce(f"{prefix}front.events", key=f"cnv_{tag}g".encode(), value=garbage)
    p.produce(f"{prefix}front.events", key=f"cnv_{tag}u".encode(), value=unknown_id)
    p.produce(f"{prefix}commands.salesforce", key=f"msg_{tag}c".encode(), value=garbage)
    assert p.flush(10) == 0
    # Records after the poison, on the same topics, still go through.
    ev = event(KNOWN[3].email, tag)
    assert pipeline.emitter.deliver(ev) == 200
    assert len(pipeline.tasks_for({f"msg_{tag}0"}, expect=1)) == 1
    pipeline.settle()
    dead = pipeline.topic("deadletter")
    [bad_id] = [d for d in dead if d["original_value"] == unknown_id]
    assert bad_id["original_topic"] == f"{prefix}front.events"
    assert bad_id["original_key"] == f"cnv_{tag}u".encode()
    assert "schema id 987654" in bad_id["error_message"]
    poisoned = [d for d in dead if d["original_value"] == garbage]
    assert sorted((d["original_topic"], d["stage"]) for d in poisoned) == sorted(
        [(f"{prefix}front.events", "decode"), (f"{prefix}commands.salesforce", "decode")])
    assert all("not Confluent wire format" in d["error_message"] for d in poisoned)
    [masked_card] = [d for d in dead if d["original_key"] == f"cnv_{tag}k".encode()]
    assert masked_card["original_value"] == carded.replace(card, b"*" * len(card))
    raw = [m.value() or b"" for m in read_to_end(pipeline.stack.bootstrap, f"{prefix}deadletter")]
    assert not [v for v in raw if card in v]


def test_worker_internal_topics_are_wire_format_too(pipeline: Pipeline) -> None:
    """The match-keys repartition topic and the table's changelog hold registered Avro."""
    stack = pipeline.stack
    settings = stack.settings()
    changelog = settings.worker_table_topics["match_table"]
    values = read_topic(stack.bootstrap, stack.registry_url, changelog)
    keys = read_topic(stack.bootstrap, stack.registry_url, settings.worker_topics["match_keys"])
    ids = {c["id"] for v in values for c in v["candidates"].values()}
    assert set(pipeline.contact_ids.values()) <= ids
    assert {k["id"] for k in keys} >= set(pipeline.contact_ids.values())


def test_changes_written_compressed_with_any_kafka_codec_reach_the_worker(pipeline: Pipeline) -> None:
    """``salesforce.changes`` may be written by another producer (MirrorMaker, a user's own
    connector, a broker or topic with ``compression.type`` set) in any of Kafka's codecs.
    The worker reads each one and goes on. aiokafka reads lz4, snappy and zstd only with
    their libraries; without them the worker crashed on the first such batch and never
    matched again."""
    from confluent_kafka import Producer

    from frontforce.salesforce import connect
    from frontforce.serialization import Serde

    tag = uuid.uuid4().hex[:6]
    person = connect(pipeline.stack.settings().salesforce).client
    person.headers.pop("Sforce-Call-Options", None)
    codecs = ("gzip", "snappy", "lz4", "zstd")
    ids = {}
    for codec in codecs:
        made = person.restful("sobjects/Contact", method="POST",
                              json={"LastName": codec, "Email": f"{codec}-was-{tag}@corp.example"})
        assert made is not None
        ids[codec] = made["id"]
    wait_changes(pipeline, set(ids.values()))
    settings = pipeline.stack.settings()
    topic = settings.topics.salesforce_changes
    serde = Serde(settings)
    later = int(time.time() * 1000) + 1000
    for codec in codecs:
        p = Producer({"bootstrap.servers": pipeline.stack.bootstrap, "compression.type": codec,
                      "partitioner": "murmur2_random", "acks": "all"})
        p.produce(topic, key=ids[codec].encode(), value=serde.encode(topic, {
            "record_id": ids[codec], "sobject": "Contact", "change_type": "UPDATE",
            "commit_timestamp": later, "changed_fields": ["Email"],
            "email": f"{codec}-{tag}@corp.example"}))
        assert p.flush(30) == 0
    pipeline.settle()
    for i, codec in enumerate(codecs):
        assert pipeline.emitter.deliver(event(f"{codec}-{tag}@corp.example", tag, i)) == 200
    tasks = pipeline.tasks_for({f"msg_{tag}{i}" for i in range(len(codecs))}, expect=len(codecs))
    assert {t["Front_Message_Id__c"]: t["WhoId"] for t in tasks} == {
        f"msg_{tag}{i}": ids[codec] for i, codec in enumerate(codecs)}


def test_a_replacement_worker_with_no_local_state_recovers_its_tables_from_kafka(
        pipeline: Pipeline) -> None:
    """A worker can be killed and replaced by one on another machine: its tables come back
    from their changelog topics. Guards the order that broke it (the changelog topic made
    before the table's Avro codec was set, so recovery read every record as JSON and a new
    worker knew no Contact): tests/broken_worker.py restores that order, and a message from
    a Contact the old worker had indexed must then not land on it. Runs last: it replaces
    the module's worker."""
    import shutil
    import signal

    stack = pipeline.stack
    tag = uuid.uuid4().hex[:6]

    def new_contact(name: str) -> tuple[str, str]:
        email = f"{name}-{tag}@replaced.example"
        r = pipeline.admin.post("/__admin/seed", json={"records": {"Contact": [
            {"LastName": name, "Email": email}]}})
        r.raise_for_status()
        [cid] = r.json()["ids"]["Contact"]
        wait_changes(pipeline, {cid})
        return cid, email

    def replace_worker(module: str) -> None:
        stack.procs["worker"].send_signal(signal.SIGKILL)
        stack.procs["worker"].wait(10)
        shutil.rmtree(stack.state_dir / "worker", ignore_errors=True)
        stack.spawn("worker", "worker", module=module)

    kept, kept_email = new_contact("Kept")
    replace_worker("frontforce")
    assert pipeline.emitter.deliver(event(kept_email, tag, 0)) == 200
    [task] = pipeline.tasks_for({f"msg_{tag}0"}, expect=1, timeout=120)
    assert task["WhoId"] == kept

    lost, lost_email = new_contact("Lost")
    replace_worker("tests.broken_worker")
    try:
        assert pipeline.emitter.deliver(event(lost_email, tag, 1)) == 200
        found = pipeline.tasks_for({f"msg_{tag}1"}, expect=1, timeout=45)
        assert not [t for t in found if t["WhoId"] == lost], (
            "the broken worker recovered its tables: the check proves nothing")
    finally:
        replace_worker("frontforce")
    pipeline.settle()


