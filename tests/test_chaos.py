"""Chaos: SIGKILL the stream worker and the Salesforce sink at random moments while Front
keeps sending, restart them, and check Salesforce ends up exactly as if nothing had died:
every message logged once, on the right Contact, none missing, none doubled.

Guards the delivery guarantee of ../shared/DESIGN.md: at-least-once everywhere, effects
exactly once through the sink's upsert on the Front message id, offsets committed only
after the effect (and its audit) is durable."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from emulators.front import WebhookEmitter
from frontforce.localstack import LocalStack
from tests.test_pipeline import KNOWN, Pipeline, event, running_pipeline

ROLES = {"worker": ("worker",), "sink-salesforce": ("sink", "salesforce")}


@pytest.fixture
def chaos_pipeline(infra: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with running_pipeline(infra, tmp_path_factory.mktemp("chaos")) as p:
        yield p


def test_sigkill_worker_and_sink_mid_stream_loses_nothing_and_doubles_nothing(
        chaos_pipeline: Pipeline) -> None:
    stack = chaos_pipeline.stack
    rng = random.Random(20261123)
    tag = uuid.uuid4().hex[:6]
    n = 80
    sent: dict[str, str] = {}
    done = threading.Event()

    def front() -> None:
        emitter = WebhookEmitter(stack.receiver_url, stack.app_secret.encode())
        for i in range(n):
            person = KNOWN[i % len(KNOWN)]
            assert emitter.deliver(event(person.email, tag, i)) == 200
            sent[f"msg_{tag}{i}"] = person.email
            time.sleep(0.05)
        done.set()

    sender = threading.Thread(target=front)
    sender.start()
    kills = 0
    while not done.is_set() or kills < 4:
        time.sleep(rng.uniform(0.3, 1.5))
        name = rng.choice(list(ROLES))
        proc = stack.procs[name]
        proc.send_signal(signal.SIGKILL)  # no goodbye: no flush, no commit, no leave-group
        proc.wait(10)
        kills += 1
        time.sleep(rng.uniform(0.0, 1.0))
        stack.spawn(name, *ROLES[name])
    sender.join(60)
    assert len(sent) == n

    tasks = chaos_pipeline.tasks_for(set(sent), expect=n, timeout=180)
    chaos_pipeline.settle()
    tasks = [t for t in chaos_pipeline.tasks() if t.get("Front_Message_Id__c") in sent]
    assert kills >= 4
    assert len(tasks) == n, f"{len(tasks)} Tasks for {n} messages after {kills} kills"
    assert len({t["Front_Message_Id__c"] for t in tasks}) == n
    for t in tasks:
        assert t["WhoId"] == chaos_pipeline.contact_ids[sent[t["Front_Message_Id__c"]]]
