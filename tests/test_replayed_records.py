"""Records handled again, at least once by design (a rebalance, a restart upstream, a
replay): the worker's agents must not undo, double or re-point what they did the first
time. Each test puts records back on an agent's own topic, or races two agents on one
Account, on the real broker and emulators, and most run a deliberately broken variant of
the worker (``tests/*_worker.py``) that must show the fault. Split from test_pipeline so
that ``pytest -n 4 --dist loadfile`` runs them beside it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from frontforce.lag import describe_lag, wait_settled
from frontforce.localstack import LocalStack
from tests.test_pipeline import (
    Pipeline,
    account_at_qualification,
    event,
    front_contact_message,
    opportunity_stage,
    run_worker_variant,
    running_pipeline,
    upsell,
    wait,
    wait_changes,
)


@pytest.fixture(scope="module")
def pipeline(infra: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with running_pipeline(infra, tmp_path_factory.mktemp("replayed")) as p:
        yield p


def test_a_new_handles_message_read_again_lands_where_the_handle_went_not_on_a_newer_match(
        pipeline: Pipeline) -> None:
    """Use case 2 under at-least-once delivery. A Front contact's email matched a Lead; an
    SMS from a number no record had landed on that Lead and the number was added to it.
    Later the same Front contact wrote from a Contact's email (a Contact outranks a Lead:
    the Front contact now leads to the Contact). Then the SMS is read again on the
    by-Front-contact topic (a rebalance, a restart upstream). Its number matches the Lead by
    itself now: the message lands there again, and the number is not added to the Contact
    too (the old worker followed the Front contact's newer note and wrote it there)."""
    from confluent_kafka import Producer

    from frontforce.kafka import read_to_end

    tag = uuid.uuid4().hex[:6]
    lead_email, contact_email = f"lee-{tag}@globex.example", f"lee.c-{tag}@globex.example"
    r = pipeline.admin.post("/__admin/seed", json={"records": {
        "Lead": [{"LastName": "Lee", "Company": "Globex", "Email": lead_email}],
        "Contact": [{"LastName": "Lee", "Email": contact_email}]}})
    r.raise_for_status()
    [lead], [contact] = r.json()["ids"]["Lead"], r.json()["ids"]["Contact"]
    wait_changes(pipeline, {lead, contact})
    link = f"https://acme.api.frontapp.com/contacts/crd_{tag}"
    number = "+14155552" + str(100 + int(tag[:2], 16))

    def message(handle: str, i: int) -> dict[str, Any]:
        return front_contact_message(handle, tag, i, link)

    def row(sobject: str, rid: str) -> dict[str, Any]:
        rows = pipeline.admin.get(f"/__admin/records/{sobject}").json()["records"]
        return next(x for x in rows if x["Id"] == rid)

    assert pipeline.emitter.deliver(message(lead_email, 0)) == 200
    assert [t["WhoId"] for t in pipeline.tasks_for({f"msg_{tag}0"}, expect=1)] == [lead]
    pipeline.settle()
    assert pipeline.emitter.deliver(message(number, 1)) == 200
    assert [t["WhoId"] for t in pipeline.tasks_for({f"msg_{tag}1"}, expect=1)] == [lead]
    wait("the number on the Lead", lambda: row("Lead", lead).get("Phone") == number)
    wait("its change event", lambda: [c for c in pipeline.topic("salesforce.changes")
                                      if c["record_id"] == lead and c.get("phone")])
    pipeline.settle()
    assert pipeline.emitter.deliver(message(contact_email, 2)) == 200
    assert [t["WhoId"] for t in pipeline.tasks_for({f"msg_{tag}2"}, expect=1)] == [contact]
    pipeline.settle()

    topic = pipeline.stack.settings().worker_topics["by_contact"]
    [sms] = [m for m in read_to_end(pipeline.stack.bootstrap, topic)
             if m.key() == f"crd_{tag}".encode()]
    p = Producer({"bootstrap.servers": pipeline.stack.bootstrap})
    p.produce(topic, key=sms.key(), value=sms.value(), partition=sms.partition())
    assert p.flush(10) == 0
    pipeline.settle()
    time.sleep(3)  # the Salesforce sink's flush window, and then some
    pipeline.settle()
    assert row("Contact", contact).get("Phone") in (None, ""), row("Contact", contact)
    assert [t["WhoId"] for t in pipeline.tasks_for({f"msg_{tag}1"}, expect=1)] == [lead]
    asked = [c["operation"] for c in pipeline.topic("commands.salesforce")
             if c["operation"].get("record_id") == contact]
    assert asked == [], asked


@pytest.mark.parametrize("variant", ["locked", "unlocked"])
def test_a_stage_tag_and_a_salesforce_change_of_one_account_both_reach_front(
        pipeline: Pipeline, variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards streams/_locks.py. Two agents write an Account's context: the one of its
    Salesforce changes and the one of stage tags, which writes once its stage command is
    stored. Here the tag agent waits 8 s more after that (tests/slow_tag_worker.py), while
    the tag's own stage change reaches Front through the other agent. Then a person puts the
    stage back in Salesforce: Front must show it. ``unlocked``, the agents not taking turns,
    must lose it: the tag agent writes back the context it read before the change, and the
    person's change then looks like what Front was sent already (the scale-out drill lost an
    Account's context this way)."""
    from frontforce.salesforce import connect

    tag = uuid.uuid4().hex[:6]
    email = f"gil-{tag}@kramerica.example"
    _, opp, shown = account_at_qualification(pipeline, f"Kramerica {tag}", "Gil", email, 7000)
    log_path = pipeline.stack.logs / "worker.log"

    def logged(line: str) -> int:
        return log_path.read_text(errors="replace").count(line) if log_path.exists() else 0

    if variant == "unlocked":
        monkeypatch.setenv("FRONTFORCE_TEST_NO_KEY_LOCK", "1")
    before, written = logged('"fast lane started"'), logged("writing the context now")
    pipeline.stack.stop_process("worker")
    pipeline.stack.spawn("worker", "worker", module="tests.slow_tag_worker")
    try:
        wait("the slow worker's fast lane", lambda: logged('"fast lane started"') > before, timeout=180)
        upsell(pipeline, f"evt_{tag}r", f"cnv_{tag}r", email, "tag")
        wait("the tag's stage in Front", lambda: shown() == "1 open, 7,000 (Proposal/Price Quote)")
        wait("the tag agent's write", lambda: logged("writing the context now") > written)
        time.sleep(0.5)
        person = connect(pipeline.stack.settings().salesforce).client
        person.headers.pop("Sforce-Call-Options", None)
        person.restful(f"sobjects/Opportunity/{opp}", method="PATCH", json={"StageName": "Qualification"})
        deadline = time.monotonic() + 60
        while not [c for c in pipeline.topic("salesforce.changes")
                   if c["record_id"] == opp and c.get("stage_name") == "Qualification"
                   and c["change_type"] == "UPDATE"]:
            assert time.monotonic() < deadline, "no change event for the person's stage"
            time.sleep(0.5)
        if variant == "locked":
            wait("the person's stage back in Front", lambda: shown() == "1 open, 7,000 (Qualification)")
            return
        pipeline.settle()
        time.sleep(3)  # the Front sink's flush window, and then some
        assert shown() == "1 open, 7,000 (Proposal/Price Quote)", (
            "the unlocked variant showed the person's stage: the check proves nothing")
    finally:
        monkeypatch.delenv("FRONTFORCE_TEST_NO_KEY_LOCK", raising=False)
        pipeline.stack.stop_process("worker")
        pipeline.stack.spawn("worker", "worker")


@pytest.mark.parametrize("variant", ["kept", "dropped"])
def test_a_stage_tag_and_its_removal_read_again_move_nothing(
        pipeline: Pipeline, variant: str) -> None:
    """Use case 4 under at-least-once delivery. After a rebalance (or a crash) the stage-tag
    agent can read an add and its removal again, right after it handled them, while its
    Account's context still shows the stage the add set (the removal's revert has not come
    back through CDC yet). The scale-out drill lost a revert that way: the add, read again,
    looked new and noted the tag's own stage as the one to go back to, so the removal, read
    again, "reverted" to it under the first removal's idempotency key, and the Salesforce
    sink applied both in one flush. Here both records are put on the agent's topic again
    right after the removal. ``kept`` is the product: a removed tag's entry stays, so the
    add read again does nothing, and every command under the removal's key puts the stage
    back. ``dropped`` (tests/tombstoneless_worker.py, the entry dropped at removal) must emit
    the second, different command."""
    from confluent_kafka import Producer

    from frontforce.kafka import read_to_end

    tag = uuid.uuid4().hex[:6]
    email = f"hal-{tag}@pendant.example"
    account, opp, shown = account_at_qualification(pipeline, f"Pendant {tag}", "Hal", email, 9000)

    def stage() -> str:
        return opportunity_stage(pipeline, opp)

    s = pipeline.stack.settings()
    internal = s.worker_topics["tags_by_account"]
    if variant == "dropped":
        run_worker_variant(pipeline, "tests.tombstoneless_worker")
    try:
        conversation = f"cnv_{tag}x"
        upsell(pipeline, f"evt_{tag}x0", conversation, email, "tag")
        # The add's stage is back through CDC: the context shows it (as in the drill).
        wait("the tag's stage in Front", lambda: shown() == "1 open, 9,000 (Proposal/Price Quote)")
        # The revert must not come back through CDC before the records are read again (on a
        # busy machine it could): Salesforce's sink waits until the worker is done with them.
        pipeline.stack.stop_process("sink-salesforce")
        upsell(pipeline, f"evt_{tag}x1", conversation, email, "untag")

        def both() -> list[Any]:
            got = [m for m in read_to_end(pipeline.stack.bootstrap, internal)
                   if m.key() == account.encode()]
            return got if len(got) == 2 else []

        records = wait("the add and the removal on the agent's topic", both, timeout=30)
        p = Producer({"bootstrap.servers": pipeline.stack.bootstrap})
        for m in records:
            p.produce(internal, key=m.key(), value=m.value(), partition=m.partition())
        assert p.flush(10) == 0
        worker_only = {g: t for g, t in pipeline.stack.worker_groups.items() if "-sink-" not in g}
        assert wait_settled(pipeline.stack.bootstrap, worker_only, timeout_s=90), describe_lag(
            pipeline.stack.bootstrap, worker_only)
        pipeline.stack.spawn("sink-salesforce", "sink", "salesforce")
        pipeline.settle()
        time.sleep(3)  # the Salesforce sink's flush window, and then some
        pipeline.settle()

        def fields(c: dict[str, Any]) -> dict[str, Any]:
            op = c["operation"]
            return dict((op[1] if isinstance(op, (tuple, list)) else op)["fields"])

        # The Opportunity's own records only (keyed by its Id): other tests of the module put
        # records no schema decodes on this topic.
        from frontforce.serialization import Serde

        serde = Serde(s)
        commands = [serde.decode(s.topics.commands_salesforce, m.value())
                    for m in read_to_end(pipeline.stack.bootstrap, s.topics.commands_salesforce)
                    if m.key() == opp.encode()]
        removal = [fields(c) for c in commands
                   if c["idempotency_key"].endswith(f"/{opp}/evt_{tag}x1")]
        if variant == "kept":
            assert removal and all(f == {"StageName": "Qualification"} for f in removal), removal
            wait("the stage put back", lambda: stage() == "Qualification")
            wait("Front shows it", lambda: shown() == "1 open, 9,000 (Qualification)")
            return
        assert {"StageName": "Proposal/Price Quote"} in removal, (
            f"the variant emitted only {removal}: the check proves nothing")
    finally:
        if "sink-salesforce" not in pipeline.stack.procs:
            pipeline.stack.spawn("sink-salesforce", "sink", "salesforce")
        if variant == "dropped":
            pipeline.stack.stop_process("worker")
            pipeline.stack.spawn("worker", "worker")


@pytest.mark.parametrize("variant", ["ordered", "unordered"])
def test_an_old_tag_removal_read_again_after_a_new_add_leaves_the_next_removal_its_revert(
        pipeline: Pipeline, variant: str) -> None:
    """Use case 4 under at-least-once delivery: a person adds the "Upsell" tag, removes it,
    adds it again; then the stage-tag agent reads the first removal again (a rebalance or a
    restart upstream sends it once more). That removal is older than the add it now finds:
    it must change nothing, so the person's next removal still puts the stage back.
    ``unordered`` (tests/stale_untag_worker.py: any removal undoes the add held) takes the
    old removal for the new add's, and the real removal then reverts nothing: the
    Opportunity stays at the tag's stage."""
    from confluent_kafka import Producer

    from frontforce.kafka import read_to_end

    tag = uuid.uuid4().hex[:6]
    email = f"ida-{tag}@quill.example"
    account, opp, shown = account_at_qualification(pipeline, f"Quill {tag}", "Ida", email, 7000)

    def stage() -> str:
        return opportunity_stage(pipeline, opp)

    internal = pipeline.stack.settings().worker_topics["tags_by_account"]
    if variant == "unordered":
        run_worker_variant(pipeline, "tests.stale_untag_worker")
    try:
        conversation = f"cnv_{tag}y"
        moved, back = "1 open, 7,000 (Proposal/Price Quote)", "1 open, 7,000 (Qualification)"
        upsell(pipeline, f"evt_{tag}y0", conversation, email, "tag")
        wait("the tag's stage in Front", lambda: shown() == moved)
        upsell(pipeline, f"evt_{tag}y1", conversation, email, "untag")
        wait("the stage put back, in Front", lambda: shown() == back)
        upsell(pipeline, f"evt_{tag}y2", conversation, email, "tag")
        wait("the new add's stage in Front", lambda: shown() == moved)

        def three() -> list[Any]:
            got = [m for m in read_to_end(pipeline.stack.bootstrap, internal)
                   if m.key() == account.encode()]
            return got if len(got) == 3 else []

        first_removal = wait("add, removal, add on the agent's topic", three, timeout=30)[1]
        assert f"evt_{tag}y1".encode() in (first_removal.value() or b"")
        p = Producer({"bootstrap.servers": pipeline.stack.bootstrap})
        p.produce(internal, key=first_removal.key(), value=first_removal.value(),
                  partition=first_removal.partition())
        assert p.flush(10) == 0
        pipeline.settle()
        upsell(pipeline, f"evt_{tag}y3", conversation, email, "untag")
        if variant == "ordered":
            wait("the stage put back by the second removal", lambda: stage() == "Qualification")
            wait("Front shows it", lambda: shown() == back)
            return
        pipeline.settle()
        time.sleep(3)  # the Salesforce sink's flush window, and then some
        pipeline.settle()
        assert stage() == "Proposal/Price Quote", "the variant reverted: the check proves nothing"
    finally:
        if variant == "unordered":
            pipeline.stack.stop_process("worker")
            pipeline.stack.spawn("worker", "worker")


@pytest.mark.parametrize("variant", ["newest", "rank-only"])
def test_an_older_note_read_again_leaves_a_front_contact_on_its_newer_match(
        pipeline: Pipeline, variant: str) -> None:
    """Use case 2 under at-least-once delivery. One Front contact wrote from Contact A's email,
    then from Contact B's: two records of equal rank, and the newer match wins (README).
    Then the agent reads A's note again (a rebalance, a restart upstream). An SMS from a
    number no record has, from that Front contact, must still land on B and add the number
    to B. ``rank-only`` (tests/rank_only_notes_worker.py: equal ranks not ordered by time)
    lets the old note take the Front contact back, and the number lands on A."""
    from confluent_kafka import Producer

    from frontforce.kafka import read_to_end

    tag = uuid.uuid4().hex[:6]
    first_email, second_email = f"max-{tag}@hooli.example", f"max.b-{tag}@hooli.example"
    r = pipeline.admin.post("/__admin/seed", json={"records": {"Contact": [
        {"LastName": "Max", "Email": first_email}, {"LastName": "Max", "Email": second_email}]}})
    r.raise_for_status()
    first, second = r.json()["ids"]["Contact"]
    wait_changes(pipeline, {first, second})
    link = f"https://acme.api.frontapp.com/contacts/crd_{tag}"
    number = "+14155553" + str(100 + int(tag[:2], 16))
    notes = pipeline.stack.settings().worker_topics["contact_notes"]

    def message(handle: str, i: int) -> dict[str, Any]:
        return front_contact_message(handle, tag, i, link)

    def phone(rid: str) -> Any:
        rows = pipeline.admin.get("/__admin/records/Contact").json()["records"]
        return next(x for x in rows if x["Id"] == rid).get("Phone")

    assert pipeline.emitter.deliver(message(first_email, 0)) == 200
    assert [t["WhoId"] for t in pipeline.tasks_for({f"msg_{tag}0"}, expect=1)] == [first]
    pipeline.settle()
    assert pipeline.emitter.deliver(message(second_email, 1)) == 200
    assert [t["WhoId"] for t in pipeline.tasks_for({f"msg_{tag}1"}, expect=1)] == [second]

    def two() -> list[Any]:
        got = [m for m in read_to_end(pipeline.stack.bootstrap, notes) if m.key() == f"crd_{tag}".encode()]
        return got if len(got) == 2 else []

    old_note = wait("both notes on the agent's topic", two, timeout=30)[0]
    assert first.encode() in (old_note.value() or b"")
    pipeline.settle()
    if variant == "rank-only":
        run_worker_variant(pipeline, "tests.rank_only_notes_worker")
    try:
        p = Producer({"bootstrap.servers": pipeline.stack.bootstrap})
        p.produce(notes, key=old_note.key(), value=old_note.value(), partition=old_note.partition())
        assert p.flush(10) == 0
        pipeline.settle()
        assert pipeline.emitter.deliver(message(number, 2)) == 200
        [task] = pipeline.tasks_for({f"msg_{tag}2"}, expect=1)
        if variant == "rank-only":
            assert task["WhoId"] == first, "the variant kept the newer match: the check proves nothing"
            return
        assert task["WhoId"] == second
        wait("the number on the newer match", lambda: phone(second) == number)
        pipeline.settle()
        time.sleep(3)  # the Salesforce sink's flush window, and then some
        assert phone(first) in (None, "")
    finally:
        if variant == "rank-only":
            pipeline.stack.stop_process("worker")
            pipeline.stack.spawn("worker", "worker")


@pytest.mark.parametrize("variant", ["resent", "stored-first", "stale-outbox"])
def test_an_email_change_whose_retraction_the_broker_refused_still_takes_the_old_email_back(
        pipeline: Pipeline, variant: str) -> None:
    """Matching under a transient send failure. A Contact's email changes; the broker does
    not acknowledge the record that takes the old email back (tests/failing_retraction_worker.py
    refuses it once), so the change-routing agent handles the change again. The second try
    must still send that retraction (the record-keys table stores the change only once it is
    sent) and must not fail on the first try's refused send: a message from the old email is
    then an unknown sender's (a Lead), one from the new email lands on the Contact.
    ``stored-first`` stores the change before sending (the try again finds its own new state
    and takes nothing back): the old email keeps matching the Contact. ``stale-outbox`` keeps
    the refused send in the try again's outbox: the agent never gets past the change."""
    from frontforce.lag import describe_lag, wait_settled
    from frontforce.salesforce import connect

    module = {"resent": "tests.failing_retraction_worker",
              "stored-first": "tests.failing_retraction_stored_first_worker",
              "stale-outbox": "tests.failing_retraction_stale_outbox_worker"}[variant]
    tag = uuid.uuid4().hex[:6]
    old, new = f"flaky-old-{tag}@initrode.example", f"flaky-new-{tag}@initrode.example"
    run_worker_variant(pipeline, module)
    try:
        person = connect(pipeline.stack.settings().salesforce).client
        person.headers.pop("Sforce-Call-Options", None)  # a person's edit, not one of ours
        made = person.restful("sobjects/Contact", method="POST", json={"LastName": "Moved", "Email": old})
        assert made is not None
        contact = made["id"]
        wait_changes(pipeline, {contact})

        def logged(i: int, sender: str) -> str:
            assert pipeline.emitter.deliver(event(sender, tag, i)) == 200
            [task] = pipeline.tasks_for({f"msg_{tag}{i}"}, expect=1)
            return str(task["WhoId"])

        assert logged(0, old) == contact
        person.restful(f"sobjects/Contact/{contact}", method="PATCH", json={"Email": new})
        wait("the update's change event", lambda: [
            c for c in pipeline.topic("salesforce.changes")
            if c["record_id"] == contact and c["change_type"] == "UPDATE"])
        log = pipeline.stack.logs / "worker.log"
        wait("the refused retraction", lambda: f"refused email:{old}" in log.read_text(errors="replace"))
        groups = pipeline.stack.worker_groups
        if variant == "stale-outbox":
            assert not wait_settled(pipeline.stack.bootstrap, groups, timeout_s=20), \
                "the variant got past the change: the check proves nothing"
            # Stuck in its retries, it would take its whole shutdown timeout to stop.
            pipeline.stack.procs["worker"].kill()
            pipeline.stack.procs["worker"].wait(10)
            return
        assert wait_settled(pipeline.stack.bootstrap, groups, timeout_s=90), \
            describe_lag(pipeline.stack.bootstrap, groups)
        assert logged(1, new) == contact
        if variant == "stored-first":
            assert logged(2, old) == contact, "the variant took the old email back: the check proves nothing"
            return
        assert logged(2, old).startswith("00Q")  # the old address: an unknown sender's Lead
    finally:
        pipeline.stack.stop_process("worker")
        pipeline.stack.spawn("worker", "worker")
