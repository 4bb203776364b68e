"""The stream worker's delivery guarantee under the failures that used to break it
(issue 7): a schema registry that goes away, a dead letter that cannot be stored, a send
the broker refuses. The registry is reached through a fault proxy so a test can take it
away from the pipeline's processes while the broker and the test's own reader keep it.

Each test fails on a worker that acks what it did not handle: the old worker dead-lettered
good records during a registry outage (or lost them when the dead letter itself could not
be encoded), and committed events whose command the broker had refused.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from frontforce.demo import read_topic
from frontforce.localstack import LocalStack
from streams._app import EXIT_STALLED
from tests.faultproxy import FaultProxy
from tests.test_pipeline import KNOWN, Pipeline, event, run_worker_variant, running_pipeline


@dataclasses.dataclass
class Routed:
    p: Pipeline
    proxy: FaultProxy
    registry_url: str  # the real registry, for the test's own reads

    @property
    def stack(self) -> LocalStack:
        return self.p.stack

    def topic(self, logical: str) -> list[dict[str, Any]]:
        return read_topic(self.stack.bootstrap, self.registry_url, f"{self.stack.topic_prefix}{logical}")

    def restart_worker(self) -> None:
        self.stack.stop_process("worker")
        self.stack.spawn("worker", "worker")

    def worker_alive(self) -> bool:
        return self.stack.procs["worker"].poll() is None

    def worker_log_tail(self, lines: int = 30) -> str:
        """Why a worker stopped, for an assertion's message."""
        path = self.stack.logs / "worker.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"worker exited {self.stack.procs['worker'].poll()}; its log ends:\n" + "\n".join(
            line[:400] for line in text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def routed(infra: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routed]:
    proxy = FaultProxy("127.0.0.1", infra.ports.registry)
    via_proxy = dataclasses.replace(infra, ports=dataclasses.replace(infra.ports, registry=proxy.port))
    try:
        with running_pipeline(via_proxy, tmp_path_factory.mktemp("delivery")) as p:
            r = Routed(p, proxy, infra.registry_url)
            # Warm the receiver's serializer (it then needs no registry to accept webhooks).
            tag = uuid.uuid4().hex[:6]
            assert p.emitter.deliver(event(KNOWN[0].email, tag)) == 200
            assert len(p.tasks_for({f"msg_{tag}0"}, expect=1)) == 1
            yield r
    finally:
        proxy.close()


def _dead_for(r: Routed, keys: set[bytes]) -> list[dict[str, Any]]:
    return [d for d in r.topic("deadletter") if d["original_key"] in keys]


def _tasks(r: Routed, ids: set[str]) -> list[dict[str, Any]]:
    return [t for t in r.p.tasks() if t.get("Front_Message_Id__c") in ids]


def test_registry_outage_after_a_restart_is_retried_in_place_not_dead_lettered(routed: Routed) -> None:
    """Guards: a registry hiccup right after a restart (empty schema cache) used to send a
    stream of good records to the dead-letter topic."""
    r = routed
    tag = uuid.uuid4().hex[:6]
    r.proxy.mode = "refuse"
    r.restart_worker()
    sent = {}
    for i in range(5):
        person = KNOWN[i % len(KNOWN)]
        assert r.p.emitter.deliver(event(person.email, tag, i)) == 200
        sent[f"msg_{tag}{i}"] = person.email
    time.sleep(8)  # the outage: the worker must wait it out, not skip
    assert r.worker_alive(), r.worker_log_tail()
    assert not _tasks(r, set(sent))
    r.proxy.mode = "http503"
    time.sleep(3)
    r.proxy.mode = "pass"
    tasks = r.p.tasks_for(set(sent), expect=len(sent))
    r.p.settle()
    tasks = _tasks(r, set(sent))
    assert sorted(t["Front_Message_Id__c"] for t in tasks) == sorted(sent)
    for t in tasks:
        assert t["WhoId"] == r.p.contact_ids[sent[t["Front_Message_Id__c"]]]
    keys = {f"cnv_{tag}{i}".encode() for i in range(5)} | {f"email:{e}".encode() for e in sent.values()}
    assert _dead_for(r, keys) == []


def _log_has(r: Routed, text: str, after: int) -> bool:
    path = r.stack.logs / "worker.log"
    return path.exists() and text in path.read_text(errors="replace")[after:]


def test_a_restart_while_the_registry_is_away_waits_to_restore_its_dedupe_state(routed: Routed) -> None:
    """Guards: the fast lane restores its dedupe ids from a topic the registry decodes; with
    the registry away at that moment the lane stopped the worker (exit 75) at once, instead
    of waiting for the registry like any batch (seen once in CI as a worker dead 6 s after a
    restart)."""
    r = routed
    path = r.stack.logs / "worker.log"
    tag = uuid.uuid4().hex[:6]
    r.proxy.mode = "refuse"
    try:
        r.stack.stop_process("worker")
        start = len(path.read_text(errors="replace")) if path.exists() else 0
        r.stack.spawn("worker", "worker")
        # The module's first event left dedupe ids in the window: their partition's restore
        # needs the registry, and must wait for it (a restore without ids would log
        # "dedupe state restored" first).
        deadline = time.monotonic() + 90
        while not _log_has(r, "dedupe state not restored yet", start) and time.monotonic() < deadline:
            assert r.worker_alive(), r.worker_log_tail()
            time.sleep(0.5)
        assert _log_has(r, "dedupe state not restored yet", start), r.worker_log_tail()
        time.sleep(5)
        assert r.worker_alive(), r.worker_log_tail()
    finally:
        r.proxy.mode = "pass"
        if not r.worker_alive():
            r.stack.spawn("worker", "worker")
    assert r.p.emitter.deliver(event(KNOWN[1].email, tag)) == 200
    assert len(r.p.tasks_for({f"msg_{tag}0"}, expect=1)) == 1
    assert _log_has(r, "dedupe state restored", start), r.worker_log_tail()


def test_a_worker_that_cannot_make_progress_stops_without_skipping(routed: Routed) -> None:
    """Guards: a transient failure that lasts must stop the worker (exit 75) with the event
    unacknowledged, so the worker that takes over processes it; never ack-and-skip."""
    r = routed
    cfg = r.stack.state_dir / "frontforce.yaml"
    original = cfg.read_text()
    tag = uuid.uuid4().hex[:6]
    try:
        cfg.write_text(original.replace("worker:\n", "worker:\n  max_stall_s: 4\n", 1))
        r.proxy.mode = "refuse"
        r.restart_worker()
        for i in range(3):
            assert r.p.emitter.deliver(event(KNOWN[i].email, tag, i)) == 200
        proc = r.stack.procs["worker"]
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.returncode == EXIT_STALLED, f"worker still running or exited {proc.returncode}"
    finally:
        cfg.write_text(original)
        r.proxy.mode = "pass"
    r.stack.spawn("worker", "worker")
    ids = {f"msg_{tag}{i}" for i in range(3)}
    r.p.tasks_for(ids, expect=3)
    r.p.settle()
    assert sorted(t["Front_Message_Id__c"] for t in _tasks(r, ids)) == sorted(ids)
    assert _dead_for(r, {f"cnv_{tag}{i}".encode() for i in range(3)}) == []


def test_poison_whose_dead_letter_cannot_be_stored_yet_is_not_acknowledged(routed: Routed) -> None:
    """Guards: the dead letter was encoded and sent inside the ``except``; when that raised
    (registry away: the dead-letter schema cannot be looked up), Faust acked the event and
    the poison record vanished without a trace."""
    r = routed
    tag = uuid.uuid4().hex[:6]
    r.proxy.mode = "refuse"
    try:
        r.restart_worker()
        garbage = b"\x01poison " + tag.encode()
        p = Producer({"bootstrap.servers": r.stack.bootstrap})
        p.produce(f"{r.stack.topic_prefix}front.events", key=f"cnv_{tag}p".encode(), value=garbage)
        assert p.flush(10) == 0
        time.sleep(6)
        assert r.worker_alive(), r.worker_log_tail()
    finally:
        r.proxy.mode = "pass"  # also when it failed: the module's next tests need the registry
        if not r.worker_alive():
            r.stack.spawn("worker", "worker")
    deadline = time.monotonic() + 90
    dead: list[dict[str, Any]] = []
    while not dead and time.monotonic() < deadline:
        dead = [d for d in _dead_for(r, {f"cnv_{tag}p".encode()}) if d["original_value"] == garbage]
        time.sleep(1)
    r.p.settle()
    dead = [d for d in _dead_for(r, {f"cnv_{tag}p".encode()}) if d["original_value"] == garbage]
    assert len(dead) == 1
    assert dead[0]["stage"] == "decode" and "not Confluent wire format" in dead[0]["error_message"]


def refused_command(r: Routed, wait_s: float = 60) -> tuple[str, list[dict[str, Any]]]:
    """A message whose Task command the broker refuses (commands.salesforce takes no record
    over 100 bytes for the moment): its tag and the dead letters of its event."""
    tag = uuid.uuid4().hex[:6]
    admin = AdminClient({"bootstrap.servers": r.stack.bootstrap})
    topic = f"{r.stack.topic_prefix}commands.salesforce"

    def set_max_bytes(value: str | None) -> None:
        op = AlterConfigOpType.SET if value else AlterConfigOpType.DELETE
        res = ConfigResource("topic", topic, incremental_configs=[
            ConfigEntry("max.message.bytes", value or "", incremental_operation=op)])
        for fut in admin.incremental_alter_configs([res]).values():
            fut.result(30)

    key = f"cnv_{tag}0".encode()  # the front.events record's key (the fast lane's input)
    set_max_bytes("100")  # every command is larger
    try:
        assert r.p.emitter.deliver(event(KNOWN[5].email, tag)) == 200
        deadline = time.monotonic() + wait_s
        dead: list[dict[str, Any]] = []
        while not dead and time.monotonic() < deadline:
            dead = [d for d in _dead_for(r, {key}) if tag.encode() in (d["original_value"] or b"")]
            time.sleep(1)
    finally:
        set_max_bytes(None)
    return tag, dead


def test_a_command_the_broker_refuses_is_dead_lettered_not_committed_away(routed: Routed) -> None:
    """Guards: a send that failed only logged in Faust and the event's offset was committed
    anyway: the message was lost with no Task and no dead letter."""
    r = routed
    tag, dead = refused_command(r)
    assert len(dead) == 1, "the refused command's event must be dead-lettered, not dropped"
    assert dead[0]["stage"] == "route-front-events"
    assert "too large" in dead[0]["error_message"]
    assert r.worker_alive(), r.worker_log_tail()
    assert not _tasks(r, {f"msg_{tag}0"})


def test_the_refused_command_check_catches_a_lane_that_commits_before_the_broker_acks(
        routed: Routed) -> None:
    """The check above can fail: the fast lane of tests/broken_lane.py counts a batch done
    once its records are handed to the producer; the refused command's event is then
    committed away, with no Task and no dead letter."""
    r = routed
    log_path = r.stack.logs / "worker.log"

    def lanes_started() -> int:
        return log_path.read_text(errors="replace").count('"fast lane started"') if log_path.exists() else 0

    before = lanes_started()
    r.stack.stop_process("worker")
    r.stack.spawn("worker", "worker", module="tests.broken_lane")
    try:
        # Its lane reading before the webhook: a lane still recovering its tables when the
        # topic's limit is lifted again would just write the Task (a busy CI machine).
        deadline = time.monotonic() + 180
        while lanes_started() <= before:
            assert time.monotonic() < deadline, "the broken lane never started"
            time.sleep(0.5)
        tag, dead = refused_command(r, wait_s=15)  # the real lane dead-letters it in 1-2 s
        assert dead == [], "the broken lane dead-lettered the event: the check proves nothing"
        r.p.settle()
        assert not _tasks(r, {f"msg_{tag}0"})
    finally:
        r.restart_worker()


def _leads(r: Routed, emails: set[str]) -> set[str]:
    rows = r.p.admin.get("/__admin/records/Lead").json()["records"]
    return {row["Email"] for row in rows if row.get("Email") in emails}


@pytest.mark.parametrize("variant", ["guarded", "unguarded"])
def test_a_record_fausts_consumer_skips_is_read_again_not_committed_away(
        routed: Routed, variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards streams/_offsets.py. Faust's consumer can hand an agent a partition with a hole
    in it and commit past the hole (the SIGKILL drill lost a Case reopen that way). Here the
    worker runs on a consumer that skips the match step's records of one unknown sender's
    two messages (tests/skipping_worker.py): the worker sees the hole at the next record of
    that partition, reads the skipped records back from the broker and handles them first,
    makes the sender's Lead without stopping, and the group's commits go on past them.
    ``unguarded``, the guard off, must lose them: every other sender gets a Lead, this one
    none, and the group's offset is committed past its records."""
    r = routed
    s = r.stack.settings()
    tag = uuid.uuid4().hex[:6]
    skipped = f"skipme-{tag}@stranger.example"
    others = {f"other{i}-{tag}@stranger.example" for i in range(20)}
    once = tmp_path / "skipped"
    monkeypatch.setenv("FRONTFORCE_TEST_SKIP_TOPIC", s.worker_topics["by_handle"])
    monkeypatch.setenv("FRONTFORCE_TEST_SKIP_KEY", skipped)
    monkeypatch.setenv("FRONTFORCE_TEST_SKIP_ONCE", str(once))
    # Two records in a row: Faust commits past a hole of one unacked offset by itself (its
    # run of acks may start one past the committed offset), not past two.
    monkeypatch.setenv("FRONTFORCE_TEST_SKIP_COUNT", "2")
    if variant == "unguarded":
        monkeypatch.setenv("FRONTFORCE_TEST_NO_GUARD", "1")
    # The skipped records' partition must have a committed offset above 0 first: Faust
    # checks a run of acks against the committed offset only when that is not 0.
    n = s.kafka.partitions

    def partition_of(handle: str) -> int:
        return (murmur2(f"email:{handle}".encode()) & 0x7FFFFFFF) % n

    warm = next(h for h in (f"warm{j}-{tag}@stranger.example" for j in range(1000))
                if partition_of(h) == partition_of(skipped))
    assert r.p.emitter.deliver(event(warm, tag, 50)) == 200
    deadline = time.monotonic() + 120
    while _leads(r, {warm}) != {warm} and time.monotonic() < deadline:
        time.sleep(0.5)
    r.p.settle()
    r.stack.stop_process("worker")
    r.stack.spawn("worker", "worker", module="tests.skipping_worker")
    try:
        assert r.p.emitter.deliver(event(skipped, tag, 0)) == 200
        assert r.p.emitter.deliver(event(skipped, tag, 100)) == 200
        deadline = time.monotonic() + 180
        while not once.exists():
            assert time.monotonic() < deadline, "the skipping consumer never met the record"
            time.sleep(0.3)
        # Records after it, in every partition of the match step's topic (20 handles).
        for i, email in enumerate(sorted(others), start=1):
            assert r.p.emitter.deliver(event(email, tag, i)) == 200
        proc = r.stack.procs["worker"]
        want = others | ({skipped} if variant == "guarded" else set())
        deadline = time.monotonic() + 120
        while _leads(r, want) != want and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _leads(r, want) == want
        r.p.settle()
        where = once.read_text()
        topic, at = where.rsplit("[", 1)
        partition, offset = (int(x) for x in at.rstrip("]").split("]@"))
        assert partition == partition_of(skipped) and offset >= 2, f"skipped up to {where}"
        c = Consumer({"bootstrap.servers": r.stack.bootstrap, "group.id": s.worker.app_id})
        try:
            [committed] = c.committed([TopicPartition(topic, partition)], timeout=10)
        finally:
            c.close()
        if variant == "guarded":
            assert _leads(r, {skipped}) == {skipped}
            assert proc.poll() is None, f"the worker stopped (exit {proc.returncode})"
            log = (r.stack.logs / "worker.log").read_text(errors="replace")
            assert "read back from the broker" in log and where.split("@")[0] in log
            # Handled, acked, committed: the group's commits go on past the hole.
            assert committed.offset > offset, "the group's commits stalled at the skipped record"
            return
        # The broken variant: the record is lost, and not for want of waiting.
        assert proc.poll() is None, "the unguarded worker stopped: the check proves nothing"
        assert _leads(r, {skipped}) == set()
        assert committed.offset > offset, "Faust did not commit past the skipped record"
    finally:
        monkeypatch.delenv("FRONTFORCE_TEST_NO_GUARD", raising=False)
        monkeypatch.delenv("FRONTFORCE_TEST_SKIP_TOPIC")
        monkeypatch.delenv("FRONTFORCE_TEST_SKIP_COUNT")
        r.restart_worker()


@pytest.mark.parametrize("lane", ["restoring", "amnesiac"])
def test_a_webhook_redelivered_after_a_worker_restart_is_still_a_repeat(routed: Routed, lane: str) -> None:
    """Guards the loop guard's dedupe across a restart: the fast lane restores the event ids
    of its window from its dedupe log, so Front's redelivery of an event the worker handled
    before it restarted is audited as a repeat, not matched and sent to the sink again.
    ``amnesiac`` runs tests/amnesiac_lane.py, which restores nothing, and must audit the
    redelivery MATCHED."""
    r = routed
    tag = uuid.uuid4().hex[:6]
    ev = event(KNOWN[2].email, tag)
    assert r.p.emitter.deliver(ev) == 200
    assert len(r.p.tasks_for({f"msg_{tag}0"}, expect=1)) == 1
    r.p.settle()
    if lane == "amnesiac":
        run_worker_variant(r.p, "tests.amnesiac_lane")
    else:
        r.restart_worker()
    try:
        assert r.p.emitter.deliver(ev) == 200
        r.p.settle()
    finally:
        if lane == "amnesiac":
            r.restart_worker()
    audits = [a for a in r.topic("audit")
              if a["correlation_id"] == ev["id"] and a["target"] in ("salesforce", "streams")]
    outcomes = sorted((a["target"], a["outcome"]) for a in audits)
    if lane == "amnesiac":
        assert ("streams", "MATCHED") in outcomes and ("streams", "SKIPPED") not in outcomes, outcomes
        return
    assert outcomes == [("salesforce", "CREATED"), ("streams", "MATCHED"), ("streams", "SKIPPED")], audits
    assert "repeat of event" in next(a["error"] for a in audits if a["outcome"] == "SKIPPED")
    assert len(_tasks(r, {f"msg_{tag}0"})) == 1
