"""``frontforce dlq list | show | redrive`` against the real broker, registry and Salesforce
emulator, with the Salesforce sink running in-process.

The incident they guard: a mapping problem dead-letters commands (here Tasks whose Case is
named by its link to the Front conversation, ``Front_Conversation_Id__c``, before any Case
carries that link: Salesforce's INVALID_FIELD "Foreign key external ID ... not found"). Once
the mapping is fixed (the Case linked), an operator re-drives them; they must be written,
and written once, even when ``redrive`` runs again, or twice at the same time."""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from frontforce.cli import app
from frontforce.contracts import Contracts
from frontforce.errors import FatalError
from frontforce.kafka import ensure_topics, read_to_end
from frontforce.localstack import LocalStack
from frontforce.logs import setup as setup_logs
from frontforce.ops import dlq
from frontforce.serialization import Serde
from sinks.salesforce import SalesforceSink
from tests.conftest import new_pipeline

EXT = "Front_Message_Id__c"


@pytest.fixture(scope="module")
def stack(infra: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    setup_logs("INFO")
    s = new_pipeline(infra, tmp_path_factory.mktemp("dlq"))
    try:
        s.start_salesforce()
        s.write_config()
        settings = s.settings()
        ensure_topics(settings)
        Contracts(settings).register()
        yield s
    finally:
        s.stop_all(infra=False)


class Org:
    def __init__(self, stack: LocalStack) -> None:
        assert stack.ca_file is not None
        self.http = httpx.Client(base_url=stack.salesforce_url,
                                 verify=ssl.create_default_context(cafile=str(stack.ca_file)))

    def tasks(self, ids: list[str]) -> list[dict[str, Any]]:
        rows = self.http.get("/__admin/records/Task").raise_for_status().json()["records"]
        return [t for t in rows if t.get(EXT) in set(ids) and not t.get("IsDeleted")]

    def seed_case(self, conversation: str) -> str:
        r = self.http.post("/__admin/seed", json={"records": {"Case": [
            {"Subject": "Billing question", "Status": "New", "Front_Conversation_Id__c": conversation}]}})
        return str(r.raise_for_status().json()["ids"]["Case"][0])


def task_command(serde: Serde, topic: str, mid: str, conversation: str) -> bytes:
    return serde.encode(topic, {
        "command_id": f"cmd-{mid}", "idempotency_key": f"Task/{EXT}/{mid}",
        "created_at": int(time.time() * 1000),
        "origin": {"system": "frontforce", "source_event_id": f"evt-{mid}",
                   "correlation_id": f"evt-{mid}"},
        "operation": ("frontforce.commands.UpsertTask", {
            "external_id_field": EXT, "external_id": mid, "who_id": None, "what_id": None,
            "owner_id": None, "subject": f"Inbound email: {mid}", "description": None,
            "activity_date": date(2026, 1, 5), "status": "Completed", "task_subtype": "Email",
            "front_conversation_id": conversation,
            # The Case by its link to the conversation: resolved by Salesforce in the create.
            "what_ref": {"sobject": "Case", "field": "Front_Conversation_Id__c", "value": conversation}}),
    })


def wait_for(what: str, fn: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def copies(stack: LocalStack, topic: str, dead_letter_ids: set[str]) -> dict[str, int]:
    """Committed records on ``topic`` that are re-drives of these dead letters, per id."""
    out = dict.fromkeys(dead_letter_ids, 0)
    for m in read_to_end(stack.bootstrap, topic):
        for header in m.headers() or []:
            k, v = header[0], header[1]
            if k == dlq.REDRIVE_HEADER:
                dl = (v.decode() if isinstance(v, bytes) else str(v or "")).rsplit("]@", 1)
                ident = f"{dl[0].rsplit('[', 1)[1]}@{dl[1]}"
                if ident in out:
                    out[ident] += 1
    return out


def test_mapping_dead_letters_are_written_once_after_the_fix_and_redrive(
        stack: LocalStack, tmp_path: Path) -> None:
    """Dead letters from a mapping problem, re-driven after the fix: each Task is written
    exactly once at Salesforce; a second redrive sends nothing and writes nothing; two
    redrives racing for a fresh dead letter send it once (transaction + fencing)."""
    settings = stack.settings()
    settings = settings.model_copy(update={"sink": settings.sink.model_copy(update={"batch_wait_ms": 200})})
    topics = settings.topics
    config = str(stack.state_dir / "frontforce.yaml")
    serde = Serde(settings)
    org = Org(stack)
    tag = uuid.uuid4().hex[:6]
    conversation = f"cnv_{tag}"
    bad = [f"m-{tag}-{i}" for i in range(2)]
    good = [f"m-{tag}-ok"]
    producer = Producer({"bootstrap.servers": stack.bootstrap})
    for mid in bad:
        producer.produce(topics.commands_salesforce, key=mid.encode(),
                         value=task_command(serde, topics.commands_salesforce, mid, conversation))
    producer.produce(topics.commands_salesforce, key=good[0].encode(), value=serde.encode(
        topics.commands_salesforce, _plain(good[0])))
    assert producer.flush(10) == 0

    sink = SalesforceSink(settings)
    thread = threading.Thread(target=sink.run, daemon=True)
    thread.start()
    try:
        wait_for("the good Task", lambda: org.tasks(good))
        letters = wait_for("two dead letters", lambda: (ls := dlq.list_dead_letters(settings))
                           and len(ls) >= 2 and ls)
        assert len(letters) == 2, letters
        assert all("Foreign key external ID" in d.error_message and d.stage == "sink.salesforce"
                   for d in letters), [d.reason for d in letters]
        ids = {d.id for d in letters}

        cli = CliRunner()
        listed = cli.invoke(app, ["dlq", "list", "-c", config])
        assert listed.exit_code == 0, listed.output
        assert all(i in listed.output for i in ids) and "Foreign key external ID" in listed.output
        assert "2 dead letter(s)" in listed.output
        shown = cli.invoke(app, ["dlq", "show", sorted(ids)[0], "-c", config])
        assert shown.exit_code == 0, shown.output
        # stdout alone: the output mixes in stderr, where the sink running beside the
        # command may log a line meanwhile (a "flush done" once made this fail).
        full = json.loads(shown.stdout)
        assert full["original_value"]["encoding"] == "avro"
        assert full["original_value"]["value"]["command_id"] in {f"cmd-{m}" for m in bad}
        assert full["original_key"]["value"] in bad or full["original_key"]["encoding"] == "utf-8"

        # The fix: the Case gets its link to the conversation.
        case_id = org.seed_case(conversation)
        assert org.tasks(bad) == []
        first = cli.invoke(app, ["dlq", "redrive", "--reason", "foreign key", "-c", config])
        assert first.exit_code == 0, first.output
        assert "2 re-driven, 0 already re-driven" in first.output, first.output
        written = wait_for("the re-driven Tasks", lambda: len(org.tasks(bad)) == 2 and org.tasks(bad))
        assert sorted(t[EXT] for t in written) == sorted(bad)
        assert {t["WhatId"] for t in written} == {case_id}

        # Again, with everything: nothing is sent, nothing new is written.
        again = cli.invoke(app, ["dlq", "redrive", "--all", "-c", config])
        assert again.exit_code == 0, again.output
        assert "0 re-driven, 2 already re-driven" in again.output, again.output
        assert copies(stack, topics.commands_salesforce, ids) == dict.fromkeys(ids, 1)
        time.sleep(1.5)  # a flush window and more: a second copy would have been written
        assert len(org.tasks(bad)) == 2 and len(org.tasks(good)) == 1
        assert len(dlq.list_dead_letters(settings)) == 2  # and nothing dead-lettered again

        # Two redrives at once for a fresh dead letter: sent once.
        late = f"m-{tag}-late"
        producer.produce(topics.commands_salesforce, key=late.encode(),
                         value=task_command(serde, topics.commands_salesforce, late, f"cnv_{tag}_late"))
        assert producer.flush(10) == 0
        fresh = wait_for("the third dead letter", lambda: [
            d for d in dlq.list_dead_letters(settings) if d.id not in ids])
        org.seed_case(f"cnv_{tag}_late")
        results: list[Any] = []

        def run() -> None:
            try:
                results.append(dlq.redrive(settings, ids=[fresh[0].id], by="race"))
            except FatalError as exc:
                results.append(exc)

        racers = [threading.Thread(target=run) for _ in range(2)]
        for t in racers:
            t.start()
        for t in racers:
            t.join(60)
        sent = [r for r in results if isinstance(r, dlq.RedriveReport) and r.sent]
        assert len(sent) <= 1, results
        if not sent:  # the fenced one failed and the other found nothing sent: once more
            results.append(dlq.redrive(settings, ids=[fresh[0].id], by="race"))
        assert copies(stack, topics.commands_salesforce, {fresh[0].id}) == {fresh[0].id: 1}
        wait_for("the late Task", lambda: org.tasks([late]))
        assert len(dlq.redriven_markers(settings)) == 3
    finally:
        sink.stop_event.set()
        thread.join(30)


def _plain(mid: str) -> dict[str, Any]:
    return {
        "command_id": f"cmd-{mid}", "idempotency_key": f"Task/{EXT}/{mid}",
        "created_at": int(time.time() * 1000),
        "origin": {"system": "frontforce", "source_event_id": f"evt-{mid}", "correlation_id": f"evt-{mid}"},
        "operation": ("frontforce.commands.UpsertTask", {
            "external_id_field": EXT, "external_id": mid, "who_id": None, "what_id": None,
            "owner_id": None, "subject": f"Inbound email: {mid}", "description": None,
            "activity_date": date(2026, 1, 5), "status": "Completed", "task_subtype": "Email",
            "front_conversation_id": None}),
    }


def test_select_and_ids() -> None:
    d = dlq.DeadLetter("0@1", 0, 1, "t", 0, 5, b"k", b"v", "sink.salesforce", "InvalidRecordError",
                       "INVALID_FIELD: Foreign key external ID", 1, 0)
    e = dlq.DeadLetter("2@7", 2, 7, "t", 1, 9, None, b"v", "decode", "InvalidRecordError",
                       "not Confluent wire format", 1, 0)
    assert dlq.select([d, e], reason="FOREIGN") == ([d], [])
    assert dlq.select([d, e], all_=True) == ([d, e], [])
    assert dlq.select([d, e], ids=["2@7", "9@9"]) == ([e], ["9@9"])
    with pytest.raises(ValueError):
        dlq.select([d], ids=["nope"])
    with pytest.raises(ValueError):
        dlq.select([d], all_=True, reason="x")
    assert dlq.age_text(3725) == "1h02m"
    assert dlq._bytes(b"\xff\x00") == {"encoding": "binary", "length": 2, "hex": "ff00", "base64": "/wA="}
