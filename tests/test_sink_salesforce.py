"""The Salesforce sink against the real broker, the real registry and the Salesforce emulator
(issue 7): transient failures are retried in place without dead-lettering or committing,
the member stays in its group while it waits, the API budget pauses and resumes the sink,
and a misconfigured external id field stops it instead of dead-lettering every record.

Each test gets fresh topics and a fresh consumer group; the sink runs in-process (in a
thread) so a test can read its counters, with the emulator as a separate process."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic
from requests.adapters import HTTPAdapter

from frontforce.config import Settings
from frontforce.contracts import Contracts
from frontforce.demo import read_topic
from frontforce.errors import FatalError
from frontforce.kafka import ensure_topics
from frontforce.localstack import REPO, LocalStack
from frontforce.logs import setup as setup_logs
from frontforce.salesforce import SalesforceConnection, connect
from frontforce.serialization import Serde
from sinks.salesforce import SalesforceSink
from tests.conftest import new_pipeline

EXT = "Front_Message_Id__c"


@pytest.fixture(scope="module")
def sf(infra: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One Salesforce emulator for the module; every test resets it."""
    setup_logs("INFO")
    stack = new_pipeline(infra, tmp_path_factory.mktemp("sink"))
    try:
        stack.start_salesforce()
        stack.write_config()
        yield stack
    finally:
        stack.stop_all(infra=False)



# Calls every sink makes when it starts: the mapping check's describe of Task, Lead, Case,
# Opportunity and Account (sinks/salesforce/_mapping.py), then /limits.
START_CALLS = 5 + 1

class TcpProxy:
    """A TCP forwarder in front of the registry that a test can cut (connections are
    accepted and dropped at once) and restore: a registry that is down for a while."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up.clear()
        with self._lock:
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._open = []

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.sock.close()


class Env:
    """Fresh topics and group on the shared infrastructure, the emulator reset, and what a
    test needs to drive the sink and to look at its effects."""

    def __init__(self, stack: LocalStack, registry_url: str | None = None,
                 deadletter_config: dict[str, str] | None = None,
                 sink: dict[str, Any] | None = None, salesforce: dict[str, Any] | None = None) -> None:
        self.stack = stack
        tag = uuid.uuid4().hex[:8]
        base = stack.settings()
        self.settings = base.model_copy(update={
            "kafka": base.kafka.model_copy(update={"topic_prefix": f"s{tag}."}),
            "sink": base.sink.model_copy(update={"group_id": f"sink-{tag}", **(sink or {})}),
            # Within half of the shortest max.poll.interval.ms the tests use (10 s).
            "salesforce": base.salesforce.model_copy(update={"timeout_s": 4.0, **(salesforce or {})}),
        })
        self.topics = self.settings.topics
        self.admin = AdminClient({"bootstrap.servers": stack.bootstrap})
        if deadletter_config:
            fut = self.admin.create_topics([NewTopic(self.topics.deadletter, num_partitions=3,
                                                     replication_factor=1, config=deadletter_config)])
            fut[self.topics.deadletter].result()
        ensure_topics(self.settings)
        Contracts(self.settings).register()
        self.serde = Serde(self.settings)
        if registry_url is not None:
            self.settings = self.settings.model_copy(update={
                "kafka": self.settings.kafka.model_copy(update={"schema_registry_url": registry_url})})
        assert stack.ca_file is not None
        self.sf = httpx.Client(base_url=stack.salesforce_url,
                               verify=ssl.create_default_context(cafile=str(stack.ca_file)))
        self.sf.post("/__admin/reset").raise_for_status()
        self.producer = Producer({"bootstrap.servers": stack.bootstrap})
        self.group = self.settings.sink.group_id

    # -- input ---------------------------------------------------------------------------
    def command(self, message_id: str, **op: Any) -> dict[str, Any]:
        return {
            "command_id": f"cmd-{message_id}",
            "idempotency_key": f"Task/{EXT}/{message_id}",
            "created_at": int(time.time() * 1000),
            "origin": {"system": "frontforce", "source_event_id": f"evt-{message_id}",
                       "correlation_id": f"evt-{message_id}"},
            "operation": ("frontforce.commands.UpsertTask", {
                "external_id_field": EXT, "external_id": message_id, "who_id": None,
                "what_id": None, "owner_id": None, "subject": f"Inbound email: {message_id}",
                "description": None, "activity_date": date(2026, 1, 5), "status": "Completed",
                "task_subtype": "Email", "front_conversation_id": f"cnv-{message_id}", **op}),
        }

    def send(self, n: int, key: Callable[[int], str] | None = None, **op: Any) -> list[str]:
        """Produce ``n`` UpsertTask commands; their Front message ids."""
        tag = uuid.uuid4().hex[:6]
        ids = [f"msg_{tag}_{i}" for i in range(n)]
        for i, mid in enumerate(ids):
            value = self.serde.encode(self.topics.commands_salesforce, self.command(mid, **op))
            self.producer.produce(self.topics.commands_salesforce,
                                  key=(key(i) if key else mid).encode(), value=value)
        assert self.producer.flush(10) == 0
        return ids

    def op_command(self, command_id: str, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A command of any operation (``name`` as in the schema, e.g. "UpdateRecord")."""
        return {
            "command_id": command_id,
            "idempotency_key": command_id,
            "created_at": int(time.time() * 1000),
            "origin": {"system": "frontforce", "source_event_id": f"evt-{command_id}",
                       "correlation_id": f"evt-{command_id}"},
            "operation": (f"frontforce.commands.{name}", fields),
        }

    def replay_settings(self) -> Settings:
        """Settings of a sink that replays the command topic from the start (a new consumer
        group, as ``frontforce replay`` does); the env follows that group from now on."""
        replay = self.settings.model_copy(update={"sink": self.settings.sink.model_copy(
            update={"group_id": f"{self.group}-replay"})})
        self.group = replay.sink.group_id
        return replay

    def send_commands(self, commands: list[dict[str, Any]], key: str = "one-partition") -> None:
        for cmd in commands:
            self.producer.produce(self.topics.commands_salesforce, key=key.encode(),
                                  value=self.serde.encode(self.topics.commands_salesforce, cmd))
        assert self.producer.flush(10) == 0

    def seed(self, records: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
        r = self.sf.post("/__admin/seed", json={"records": records})
        r.raise_for_status()
        return dict(r.json()["ids"])

    def rows(self, sobject: str) -> dict[str, dict[str, Any]]:
        r = self.sf.get(f"/__admin/records/{sobject}")
        r.raise_for_status()
        return {row["Id"]: row for row in r.json()["records"]}

    def api_calls(self) -> int:
        r = self.sf.get("/__admin/stats")
        r.raise_for_status()
        return int(r.json()["api_calls"])

    def send_raw(self, key: bytes, value: bytes) -> None:
        self.producer.produce(self.topics.commands_salesforce, key=key, value=value)
        assert self.producer.flush(10) == 0

    # -- the emulator ----------------------------------------------------------------------
    def fault(self, **rule: Any) -> None:
        self.sf.post("/__admin/faults", json=rule).raise_for_status()

    def sf_config(self, **values: Any) -> dict[str, Any]:
        r = self.sf.post("/__admin/config", json=values)
        r.raise_for_status()
        return dict(r.json())

    def tasks(self, ids: list[str]) -> list[dict[str, Any]]:
        r = self.sf.get("/__admin/records/Task")
        r.raise_for_status()
        body = r.json()
        rows = body["records"] if isinstance(body, dict) else body
        return [t for t in rows if t.get(EXT) in set(ids) and not t.get("IsDeleted")]

    def wait_tasks(self, ids: list[str], timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.tasks(ids)
            if len(found) >= len(ids):
                return found
            time.sleep(0.3)
        return self.tasks(ids)

    # -- kafka -----------------------------------------------------------------------------
    def audit(self) -> list[dict[str, Any]]:
        return read_topic(self.stack.bootstrap, self.stack.registry_url, self.topics.audit)

    def deadletters(self) -> list[dict[str, Any]]:
        return read_topic(self.stack.bootstrap, self.stack.registry_url, self.topics.deadletter)

    def lag(self) -> dict[int, tuple[int, int]]:
        """partition -> (committed offset or -1, end offset) of the sink's group."""
        topic = self.topics.commands_salesforce
        parts = self.admin.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in parts]
        fut = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(self.group, tps)])
        committed = {tp.partition: tp.offset for tp in fut[self.group].result().topic_partitions}
        c = Consumer({"bootstrap.servers": self.stack.bootstrap, "group.id": f"probe-{uuid.uuid4()}"})
        try:
            return {p: (committed.get(p, -1), c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
                    for p in parts}
        finally:
            c.close()

    def committed_all(self, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(end == 0 or committed == end for committed, end in self.lag().values()):
                return True
            time.sleep(0.3)
        return False

    def nothing_committed(self) -> bool:
        return all(committed < 0 for committed, _ in self.lag().values())

    def members(self) -> list[Any]:
        desc = self.admin.describe_consumer_groups([self.group])[self.group].result()
        return list(desc.members)

    def close(self) -> None:
        self.sf.close()


@pytest.fixture
def env_factory(sf: LocalStack) -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def make(**kw: Any) -> Env:
        e = Env(sf, **kw)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


class Running:
    """``SalesforceSink.run`` in a thread; the exception it ended with, if any."""

    def __init__(self, sink: SalesforceSink) -> None:
        self.sink = sink
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sink.run()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc

    def alive(self) -> bool:
        return self.thread.is_alive()

    def wait_until_assigned(self, env: Env, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            if any(m.assignment.topic_partitions for m in env.members()):
                return
            time.sleep(0.2)
        raise AssertionError(f"sink got no partitions (error: {self.error!r})")

    def stop(self, timeout: float = 30) -> None:
        self.sink.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "sink did not stop"


@pytest.fixture
def running() -> Iterator[Callable[[SalesforceSink], Running]]:
    started: list[Running] = []

    def start(sink: SalesforceSink) -> Running:
        r = Running(sink)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.alive():
            r.stop()


def outcomes(audit: list[dict[str, Any]], ids: list[str]) -> list[str]:
    return sorted(a["outcome"] for a in audit if a["command_id"] in {f"cmd-{i}" for i in ids})


# ------------------------------------------------------------------ 1. transient decode and produce
def test_registry_outage_is_retried_in_place_while_the_sink_stays_in_its_group(
        infra: LocalStack, env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """Issue 7: a registry that does not answer made the sink dead-letter good commands (or
    die). Now it retries the decode in place, commits nothing meanwhile, and keeps polling
    with its partitions paused, so a wait longer than max.poll.interval.ms does not evict it."""
    proxy = TcpProxy(infra.ports.registry)
    try:
        env = env_factory(registry_url=f"http://127.0.0.1:{proxy.port}/apis/ccompat/v7",
                          sink={"max_poll_interval_ms": 15000, "retry_max_s": 120})
        ids = env.send(4)
        proxy.cut()
        run = running(SalesforceSink(env.settings))
        run.wait_until_assigned(env)
        time.sleep(20)  # longer than max.poll.interval.ms
        assert run.alive(), f"sink died during a registry outage: {run.error!r}"
        assert env.tasks(ids) == []
        assert env.deadletters() == []
        assert env.nothing_committed()
        members = env.members()
        assert len(members) == 1 and len(members[0].assignment.topic_partitions) == 3
        proxy.restore()
        assert len(env.wait_tasks(ids)) == len(ids)
        assert env.committed_all()
        assert env.deadletters() == []
        assert outcomes(env.audit(), ids) == ["CREATED"] * len(ids)
        assert run.sink.member.lost == 0 and run.sink.member.revoked == 0
        assert run.sink.member.max_gap_s < 15
    finally:
        proxy.close()


def test_registry_outage_past_retry_max_s_stops_the_sink_without_skipping(
        infra: LocalStack, env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """After sink.retry_max_s the sink stops with a FatalError naming what failed; it never
    skips, dead-letters or commits the record it could not decode."""
    proxy = TcpProxy(infra.ports.registry)
    try:
        env = env_factory(registry_url=f"http://127.0.0.1:{proxy.port}/apis/ccompat/v7",
                          sink={"retry_max_s": 8})
        ids = env.send(2)
        proxy.cut()
        run = running(SalesforceSink(env.settings))
        run.thread.join(90)
        assert not run.alive()
        assert isinstance(run.error, FatalError), repr(run.error)
        assert "decoding" in str(run.error) and "schema registry" in str(run.error)
        assert env.tasks(ids) == []
        assert env.deadletters() == []
        assert env.nothing_committed()
    finally:
        proxy.close()


def test_dead_letter_refused_by_the_broker_is_produced_again_and_committed_only_after(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """Nothing is committed whose dead letter the broker did not acknowledge: a refused
    produce is retried in place (the sink neither dies nor moves on) until the broker takes it."""
    env = env_factory(deadletter_config={"max.message.bytes": "1024"}, sink={"retry_max_s": 120})
    big_garbage = b"\x01" + b"x" * 3000
    env.send_raw(b"poison", big_garbage)
    run = running(SalesforceSink(env.settings))
    run.wait_until_assigned(env)
    time.sleep(8)
    assert run.alive(), f"sink died on a refused dead letter: {run.error!r}"
    assert env.deadletters() == []
    assert env.nothing_committed()
    res = ConfigResource(ConfigResource.Type.TOPIC, env.topics.deadletter, incremental_configs=[
        ConfigEntry("max.message.bytes", "1048588", incremental_operation=AlterConfigOpType.SET)])
    for fut in env.admin.incremental_alter_configs([res]).values():
        fut.result()
    assert env.committed_all(timeout=60)
    dead = env.deadletters()
    assert [d["original_value"] for d in dead] == [big_garbage]
    assert dead[0]["stage"] == "decode"


# ------------------------------------------------------------------ 2. quota
def test_sink_pauses_at_its_budget_polls_limits_and_resumes_when_the_window_rolls(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """Issue 7: at the budget the sink made no call, so the header never changed and it
    waited forever without polling. Now it pauses (audit PAUSED, partitions paused, still
    polling), re-reads /limits, and resumes (audit RESUMED) when the daily window rolls."""
    env = env_factory(sink={"budget_recheck_s": 1.0, "max_poll_interval_ms": 10000})
    limit = int(env.sf_config()["daily_limit"])
    env.sf_config(api_usage=int(limit * 0.5) + 10)  # over the default 0.5 share
    ids = env.send(3)
    run = running(SalesforceSink(env.settings))
    run.wait_until_assigned(env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "PAUSED" not in {a["outcome"] for a in env.audit()}:
        time.sleep(0.5)
    paused = [a for a in env.audit() if a["outcome"] == "PAUSED"]
    assert len(paused) == 1, env.audit()
    assert paused[0]["operation"] == "SinkPause" and "budget" in (paused[0]["error"] or "")
    time.sleep(12)  # longer than max.poll.interval.ms
    assert run.alive(), repr(run.error)
    assert env.tasks(ids) == []
    assert env.nothing_committed()
    assert len(env.members()) == 1
    env.sf_config(api_usage=10)  # the rolling 24 h window moved on
    assert len(env.wait_tasks(ids)) == len(ids)
    assert env.committed_all()
    audit = env.audit()
    assert [a["outcome"] for a in audit if a["operation"] == "SinkPause"] == ["PAUSED", "RESUMED"]
    assert outcomes(audit, ids) == ["CREATED"] * len(ids)
    assert env.deadletters() == []
    assert run.sink.member.lost == 0


def test_request_limit_exceeded_pauses_and_never_dead_letters(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """A 403 REQUEST_LIMIT_EXCEEDED (the org's allocation spent by someone else) is
    back-pressure: pause, re-read /limits, try again; never a dead letter."""
    env = env_factory(sink={"budget_recheck_s": 1.0})
    env.fault(match={"method": "POST", "path_regex": "composite/sobjects"}, fault="request_limit",
              times=2)
    ids = env.send(3)
    run = running(SalesforceSink(env.settings))
    assert len(env.wait_tasks(ids, timeout=30)) == len(ids), repr(run.error)
    assert env.committed_all()
    audit = env.audit()
    assert "PAUSED" in {a["outcome"] for a in audit} and "RESUMED" in {a["outcome"] for a in audit}
    assert outcomes(audit, ids) == ["CREATED"] * len(ids)
    assert env.deadletters() == []


# ------------------------------------------------------------------ 3. max.poll.interval.ms
def test_slow_login_and_slow_call_time_out_and_are_retried_within_the_poll_interval(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """Issue 7: no Salesforce call had a timeout, so one stalled call held the consumer past
    max.poll.interval.ms. Now login and every call end at salesforce.timeout_s, are retried,
    and the consumer is polled in between."""
    env = env_factory(sink={"max_poll_interval_ms": 10000}, salesforce={"timeout_s": 2.0})
    env.fault(match={"path_regex": "oauth2/token"}, fault="latency", ms=15000, times=1)
    env.fault(match={"method": "POST", "path_regex": "composite/sobjects"}, fault="latency",
              ms=15000, times=1)
    ids = env.send(3)
    run = running(SalesforceSink(env.settings))
    assert len(env.wait_tasks(ids, timeout=25)) == len(ids), repr(run.error)
    assert env.committed_all()
    assert run.alive(), repr(run.error)
    assert run.sink.member.lost == 0
    assert run.sink.member.max_gap_s < 10
    assert env.deadletters() == []


def test_row_lock_retries_poll_between_attempts_and_the_member_stays(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """Retriable record errors are retried by one bounded policy whose waits poll the
    consumer: five slow UNABLE_TO_LOCK_ROW answers in a row take longer than
    max.poll.interval.ms, and the member is neither evicted nor dead-letters anything. The
    batches are smaller than what is on the partition: pausing mid-batch and resuming must
    not skip the records fetched meanwhile."""
    env = env_factory(sink={"max_poll_interval_ms": 10000, "batch_size": 2})
    env.fault(match={"method": "POST", "path_regex": "composite/sobjects"},
              fault="unable_to_lock_row", ms=1800, times=5)
    ids = env.send(6, key=lambda i: "same-partition")
    run = running(SalesforceSink(env.settings))
    assert len(env.wait_tasks(ids, timeout=60)) == len(ids), repr(run.error)
    assert env.committed_all()
    assert run.alive(), repr(run.error)
    assert run.sink.member.lost == 0
    assert run.sink.member.max_gap_s < 10
    assert env.deadletters() == []
    assert outcomes(env.audit(), ids) == ["CREATED"] * len(ids)


def test_salesforce_down_is_retried_by_one_bounded_policy_then_stops_the_sink(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """Issue 7: retries nested (each call retried up to max_attempts inside a loop that retried
    the records up to max_attempts again), and when the inner one gave up its RetriableError
    escaped uncaught. Now one policy makes exactly sink.max_attempts attempts, then the sink
    stops with a FatalError, dead-letters nothing and commits nothing."""
    env = env_factory(sink={"max_attempts": 3})
    env.fault(match={"method": "POST", "path_regex": "composite/sobjects"}, fault="outage")
    ids = env.send(2, key=lambda i: "one-partition")
    run = running(SalesforceSink(env.settings))
    run.thread.join(60)
    assert not run.alive()
    assert isinstance(run.error, FatalError), repr(run.error)
    assert "3 attempts" in str(run.error) and "503" in str(run.error)
    # The bound it reached, not the time limit it did not (the drills' outage run read
    # "limit 300s" from a sink that had stopped after 38 s).
    assert "sink.max_attempts 3" in str(run.error), str(run.error)
    rules = env.sf.get("/__admin/faults").json()["rules"]
    assert rules[0]["applied"] == 3
    assert env.tasks(ids) == [] and env.deadletters() == [] and env.nothing_committed()


def test_a_member_that_loses_partitions_mid_batch_commits_only_what_it_still_owns(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """A second sink joins while the first is retrying a slow batch: the first sees its
    partitions revoked during the batch and must not commit offsets of partitions it no
    longer owns (or owns again under a new assignment); every command still ends up as
    exactly one Task and every offset is committed."""
    env = env_factory(sink={"max_poll_interval_ms": 10000})
    env.fault(match={"method": "POST", "path_regex": "composite/sobjects"},
              fault="unable_to_lock_row", ms=1500, times=4)
    ids = env.send(30)
    first = running(SalesforceSink(env.settings))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rules = env.sf.get("/__admin/faults").json()["rules"]
        if rules and rules[0]["applied"] >= 1:
            break
        time.sleep(0.2)
    second = running(SalesforceSink(env.settings))
    tasks = env.wait_tasks(ids, timeout=90)
    assert len(tasks) == len(ids), (repr(first.error), repr(second.error))
    assert len({t[EXT] for t in tasks}) == len(ids)
    assert env.committed_all(timeout=60), env.lag()
    assert first.alive() and second.alive(), (repr(first.error), repr(second.error))
    assert first.sink.member.revoked + first.sink.member.lost > 0
    assert env.deadletters() == []
    time.sleep(3)
    assert env.committed_all(timeout=1), env.lag()  # no late commit moved an offset back


class _RaceAdapter(HTTPAdapter):
    """Plays the race of two writers on one new external id: before our first collections
    create reaches Salesforce, the other writer's identical create does (and inserts the
    Tasks); our request then gets what the race's loser gets from a real org, a per-record
    DUPLICATE_VALUE on the unique external id. The emulator serializes writes, so it cannot
    lose this race by itself."""

    def __init__(self) -> None:
        super().__init__()
        self.raced = 0

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if self.raced or request.method != "POST" or not (request.url or "").endswith("composite/sobjects"):
            return super().send(request, *args, **kwargs)
        winner = super().send(request.copy(), *args, **kwargs)  # the other writer's insert
        self.raced += 1
        ids = [r["id"] for r in winner.json()]
        loser = requests.Response()
        loser.status_code = 200
        loser.headers = winner.headers
        loser.url = winner.url
        loser.request = request
        loser._content = json.dumps([{"success": False, "errors": [{
            "statusCode": "DUPLICATE_VALUE", "fields": [],
            "message": f"duplicate value found: {EXT} duplicates value on record with id: {i}"}]}
            for i in ids]).encode()
        return loser


def test_duplicate_value_on_the_external_id_is_the_same_upsert_not_a_dead_letter(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """Two sinks (or a replay) racing on one new external id: the loser's DUPLICATE_VALUE
    means the Task exists. The sink does not write it again and audits SKIPPED with the
    winner's Task id; nothing is dead-lettered and no Task is doubled."""
    env = env_factory()
    adapter = _RaceAdapter()

    def connector() -> SalesforceConnection:
        conn = connect(env.settings.salesforce)
        conn.client.session.mount("https://", adapter)
        return conn

    ids = env.send(3, key=lambda i: "one-partition")
    run = running(SalesforceSink(env.settings, connector=connector))
    assert env.committed_all(timeout=30), repr(run.error)
    assert adapter.raced == 1
    tasks = env.tasks(ids)
    assert len(tasks) == len(ids)
    audit = [a for a in env.audit() if a["command_id"] in {f"cmd-{i}" for i in ids}]
    assert sorted(a["outcome"] for a in audit) == ["SKIPPED"] * len(ids)
    assert {a["record_id"] for a in audit} == {t["Id"] for t in tasks}
    assert env.deadletters() == []


def test_a_logged_message_is_a_fact_a_redelivered_command_never_rewrites_its_task(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """Issue 9: a re-delivered UpsertTask upserted the Task again and overwrote what a user
    edited in Salesforce since. Now Tasks are created (sObject Collections create) and an
    existing external id answers DUPLICATE_VALUE: audited SKIPPED with the Task's id, no
    second write, no dead letter, the user's edit kept. Twice the same external id inside one
    batch creates one Task (CREATED, then SKIPPED)."""
    env = env_factory()
    ids = env.send(2, key=lambda i: "one-partition")
    run = running(SalesforceSink(env.settings))
    assert env.committed_all(timeout=30), repr(run.error)
    tasks = {t[EXT]: t for t in env.tasks(ids)}
    assert len(tasks) == 2
    edited = tasks[ids[0]]["Id"]
    conn = connect(env.settings.salesforce)
    conn.client.Task.update(edited, {"Subject": "Edited by a user"})
    calls_before = run.sink.stats["api_calls"]
    # The same commands again (a re-delivery), plus one new message's command twice.
    for mid in ids:
        env.producer.produce(env.topics.commands_salesforce, key=b"one-partition",
                             value=env.serde.encode(env.topics.commands_salesforce, env.command(mid)))
    new = f"msg_new_{uuid.uuid4().hex[:6]}"
    for _ in range(2):
        env.producer.produce(env.topics.commands_salesforce, key=b"one-partition",
                             value=env.serde.encode(env.topics.commands_salesforce, env.command(new)))
    assert env.producer.flush(10) == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(env.audit()) < 6:
        time.sleep(0.3)
    assert env.committed_all(timeout=30), repr(run.error)
    after = {t[EXT]: t for t in env.tasks([*ids, new])}
    assert len(env.tasks([*ids, new])) == 3  # nothing doubled
    assert after[ids[0]]["Subject"] == "Edited by a user"
    assert after[ids[1]]["Subject"] == tasks[ids[1]]["Subject"]
    audit = env.audit()
    assert outcomes(audit, ids) == ["CREATED", "CREATED", "SKIPPED", "SKIPPED"]
    assert {a["record_id"] for a in audit if a["command_id"] in {f"cmd-{i}" for i in ids}} == {
        tasks[i]["Id"] for i in ids}
    assert outcomes(audit, [new]) == ["CREATED", "SKIPPED"]
    assert {a["record_id"] for a in audit if a["command_id"] == f"cmd-{new}"} == {after[new]["Id"]}
    assert env.deadletters() == []
    # Each command is one create attempt, nothing else: no update call follows a duplicate.
    assert run.sink.stats["api_calls"] - calls_before <= 2


def _requests(env: Env, since: float) -> dict[str, int]:
    """The emulator's public requests since ``since`` by route, version left out
    ("GET query", "POST composite/sobjects")."""
    r = env.sf.get("/__admin/requests", params={"since": since})
    r.raise_for_status()
    out: dict[str, int] = {}
    for route, n in r.json()["requests"].items():
        method, path = route.split(" ", 1)
        if path.startswith("/services/data/v"):
            path = path.split("/", 4)[-1]
        out[f"{method} {path}"] = out.get(f"{method} {path}", 0) + n
    return out


@pytest.mark.parametrize("look_up", ["asks", "broken"])
def test_a_replay_looks_its_tasks_up_instead_of_creating_them_and_restores_a_deleted_one(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running],
        look_up: str) -> None:
    """A replay re-reads commands whose Tasks exist. Once a flush's creates mostly answer
    DUPLICATE_VALUE, the sink looks the next flushes' external ids up (one query for a
    flush) instead of sending every record to be refused: nothing written, each command
    SKIPPED with its Task's Id. Salesforce is still asked: a Task deleted there since is
    found missing and created again (a replay is how it is recovered). New commands
    after the replay are created at once, with no query. ``broken`` believes every Task
    of the replay exists without asking (the shortcut a local "created" set would be):
    the deleted Task is then not restored, and the test must see it."""
    env = env_factory(sink={"batch_size": 200, "batch_wait_ms": 200})
    ids = env.send(600, key=lambda i: "one-partition")
    run = running(SalesforceSink(env.settings))
    assert env.committed_all(timeout=60), repr(run.error)
    before = {t[EXT]: t["Id"] for t in env.tasks(ids)}
    assert len(before) == 600
    run.stop()
    conn = connect(env.settings.salesforce)
    deleted = ids[-2:]  # in the replay's last flush, by then in look-up mode
    for mid in deleted:
        conn.client.Task.delete(before[mid])

    sink = SalesforceSink(env.replay_settings())
    if look_up == "broken":
        def trusting(items: list[Any]) -> None:
            for it in items:
                if it.write is None and not it.done:
                    it.done = True
                    sink._audit(it, "SKIPPED", None, None, 0.0)
        sink._look_up = trusting  # type: ignore[method-assign]
    since = time.time()
    calls_before = env.api_calls()
    run = running(sink)
    assert env.committed_all(timeout=60), repr(run.error)
    after = {t[EXT]: t["Id"] for t in env.tasks(ids)}
    if look_up == "broken":
        assert sorted(set(ids) - set(after)) == sorted(deleted)
        return
    assert sorted(after) == sorted(ids)  # the deleted ones are back, nothing doubled
    assert len(env.tasks(ids)) == 600
    assert all(after[mid] == before[mid] for mid in ids if mid not in deleted)
    assert all(after[mid] != before[mid] for mid in deleted)
    by = _audit_by_command(env, {f"cmd-{i}" for i in ids})
    assert {c: [a["outcome"] for a in by[c]] for c in by} == {
        f"cmd-{i}": ["CREATED", "CREATED" if i in deleted else "SKIPPED"] for i in ids}
    assert all(by[f"cmd-{i}"][1]["record_id"] == after[i] for i in ids)
    seen = _requests(env, since)
    # The first flush is created (and refused); the next two are looked up, one query
    # each; the last one's two missing Tasks are created. (One more of each if the
    # consumer's first fetch split a flush.)
    assert 2 <= seen.get("GET query", 0) <= 3, seen
    assert 2 <= seen.get("POST composite/sobjects", 0) <= 3, seen
    assert env.api_calls() - calls_before <= START_CALLS + 4
    assert env.deadletters() == []

    # Back to new messages: the first flush still looks up (and finds nothing), then the
    # sink creates at once.
    fresh = env.send(200, key=lambda i: "one-partition")
    assert env.committed_all(timeout=30), repr(run.error)
    since = time.time()
    more = env.send(200, key=lambda i: "one-partition")
    assert env.committed_all(timeout=30), repr(run.error)
    assert len(env.wait_tasks([*fresh, *more])) == 400
    seen = _requests(env, since)
    assert seen.get("GET query", 0) == 0 and seen.get("POST composite/sobjects", 0) >= 1, seen


# ------------------------------------------------------------------ 4. external id field
@pytest.mark.parametrize("field", ["Nope__c", "Subject", "Front_Conversation_Id__c"])
def test_start_refuses_an_external_id_field_that_is_not_a_unique_external_id(
        field: str, env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """Issue 7: a wrong salesforce.task_external_id_field dead-lettered every command. Now the
    sink checks Task's describe before it joins its group and stops, naming the field."""
    env = env_factory(salesforce={"task_external_id_field": field})
    ids = env.send(2)
    run = running(SalesforceSink(env.settings))
    run.thread.join(30)
    assert not run.alive()
    assert isinstance(run.error, FatalError), repr(run.error)
    assert field in str(run.error)
    assert env.tasks(ids) == [] and env.deadletters() == [] and env.nothing_committed()


def test_a_whole_call_refused_for_the_external_id_field_stops_instead_of_dead_lettering(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """A command keyed on a field Salesforce says is no external id (INVALID_FIELD on the
    whole collections call) is a configuration fault: the sink stops with the field's name
    instead of unrolling the batch into one dead letter per record."""
    env = env_factory()
    ids = env.send(3, key=lambda i: "one-partition", external_id_field="Nope__c")
    run = running(SalesforceSink(env.settings))
    run.thread.join(30)
    assert not run.alive()
    assert isinstance(run.error, FatalError), repr(run.error)
    assert "Nope__c" in str(run.error)
    assert env.deadletters() == [] and env.nothing_committed()
    assert env.tasks(ids) == []


def test_cli_exits_non_zero_with_the_fatal_message(sf: LocalStack, tmp_path: Path) -> None:
    """``frontforce sink salesforce`` on a misconfigured field prints ``fatal:`` with the
    field's name and exits 1, instead of running and dead-lettering."""
    cfg = tmp_path / "frontforce.yaml"
    text = (sf.state_dir / "frontforce.yaml").read_text()
    text = text.replace('  ca_bundle:', '  task_external_id_field: "Subject"\n  ca_bundle:')
    text = text.replace(f'topic_prefix: "{sf.topic_prefix}"', f'topic_prefix: "cli{uuid.uuid4().hex[:6]}."')
    cfg.write_text(text)
    done = subprocess.run([sys.executable, "-m", "frontforce", "sink", "salesforce", "--config", str(cfg)],
                          env=sf.env(), cwd=REPO, text=True, capture_output=True, timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "fatal:" in done.stderr and "Subject" in done.stderr



# ------------------------------------------------------------------ 5. every command (issue 9)
def _audit_by_command(env: Env, ids: set[str], timeout: float = 30) -> dict[str, list[dict[str, Any]]]:
    deadline = time.monotonic() + timeout
    while True:
        audit = [a for a in env.audit() if a["command_id"] in ids]
        if len(audit) >= len(ids) or time.monotonic() > deadline:
            by: dict[str, list[dict[str, Any]]] = {}
            for a in audit:
                by.setdefault(a["command_id"], []).append(a)
            return by
        time.sleep(0.3)


def test_update_record_and_close_case_patch_only_their_fields_in_one_call_per_batch(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """UpdateRecord (Contact, Lead, Account, Opportunity, Case) and CloseCase are executed:
    one sObject Collections update for the whole batch, only the fields each command carries
    (a field a user set and the command does not name stays), one audit record per command
    with its share of the call, a record Salesforce refuses dead-lettered with the
    Salesforce error while the others are written, a PostFeedItem posted (after the
    updates, in the same /composite call), and an unsupported command (UpdateRecord on a Task)
    dead-lettered with the reason, never pretended applied."""
    env = env_factory()
    ids = env.seed({
        "Account": [{"Name": "Acme"}],
        "Contact": [{"LastName": "Doe", "Email": "doe@example.com", "Title": "CTO"}],
        "Lead": [{"LastName": "Roe", "Company": "Roe Inc", "Email": "roe@example.com"}],
        "Opportunity": [{"Name": "Big deal", "StageName": "Prospecting", "CloseDate": "2026-12-31"}],
        "Case": [{"Subject": "Broken", "Description": "User text"}],
    })
    contact, lead, case = ids["Contact"][0], ids["Lead"][0], ids["Case"][0]
    account, opp = ids["Account"][0], ids["Opportunity"][0]
    cmds = [
        env.op_command("c-contact", "UpdateRecord", {"sobject": "Contact", "record_id": contact,
                                                     "fields": {"Phone": "+14155550100"}, "only_if_blank": []}),
        env.op_command("c-lead", "UpdateRecord", {"sobject": "Lead", "record_id": lead,
                                                  "fields": {"Phone": "+14155550101"}, "only_if_blank": []}),
        env.op_command("c-account", "UpdateRecord", {"sobject": "Account", "record_id": account,
                                                     "fields": {"Phone": "+14155550102"}, "only_if_blank": []}),
        env.op_command("c-opp", "UpdateRecord", {"sobject": "Opportunity", "record_id": opp,
                                                 "fields": {"StageName": "Qualification"}, "only_if_blank": []}),
        env.op_command("c-close", "CloseCase", {"case_id": case, "front_conversation_id": None,
                                                "status": "Closed", "resolution_note": None}),
        # Same Case, refused by Salesforce (no such Status): merged with c-close into one
        # record first, then written alone; dead-lettered, c-close still applied.
        env.op_command("c-bad", "UpdateRecord", {"sobject": "Case", "record_id": case,
                                                 "fields": {"Status": "Whenever"}, "only_if_blank": []}),
        env.op_command("c-feed", "PostFeedItem", {"parent_id": case, "body": "note"}),
        env.op_command("c-task", "UpdateRecord", {"sobject": "Task", "record_id": case,
                                                  "fields": {"Subject": "x"}, "only_if_blank": []}),
    ]
    env.send_commands(cmds)
    run = running(SalesforceSink(env.settings))
    assert env.committed_all(timeout=30), repr(run.error)
    by = _audit_by_command(env, {c["command_id"] for c in cmds})
    assert {k: [a["outcome"] for a in v] for k, v in by.items()} == {
        "c-contact": ["UPDATED"], "c-lead": ["UPDATED"], "c-account": ["UPDATED"],
        "c-opp": ["UPDATED"], "c-close": ["UPDATED"], "c-bad": ["DEAD_LETTERED"],
        "c-feed": ["CREATED"], "c-task": ["DEAD_LETTERED"]}
    assert by["c-close"][0]["record_id"] == case
    assert all(by[k][0]["api_calls"].get("salesforce.rest", 0) > 0 for k in ("c-contact", "c-close"))
    assert by["c-task"][0]["api_calls"] == {} and "updates only" in (by["c-task"][0]["error"] or "")
    feed = env.rows("FeedItem")
    assert [(f["ParentId"], f["Body"]) for f in feed.values()] == [(case, "note")]
    assert by["c-feed"][0]["record_id"] in feed
    rows = {t: env.rows(t) for t in ("Contact", "Lead", "Account", "Opportunity", "Case")}
    assert rows["Contact"][contact]["Phone"] == "+14155550100"
    assert rows["Contact"][contact]["Title"] == "CTO"  # not named by the command: kept
    assert rows["Lead"][lead]["Phone"] == "+14155550101"
    assert rows["Account"][account]["Phone"] == "+14155550102"
    assert rows["Opportunity"][opp]["StageName"] == "Qualification"
    assert rows["Case"][case]["Status"] == "Closed"
    assert rows["Case"][case]["Description"] == "User text" and rows["Case"][case]["Priority"] == "Medium"
    dead = {d["original_offset"]: d for d in env.deadletters()}
    assert len(dead) == 2
    assert any("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" in d["error_message"] for d in dead.values()), dead
    # Six updates in one collections request and the FeedItem in another, both in one
    # /composite call; then c-close and c-bad alone (their merged record was refused); plus
    # describe and /limits at start.
    assert run.sink.stats["api_calls"] == START_CALLS + 1 + 2, (run.sink.stats, env.sf.get("/__admin/stats").json())


def test_unknown_senders_lead_and_its_first_task_cost_no_query_and_one_lead_per_handle(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """UpsertLead creates the Lead once on the external id the command names
    (Front_Handle__c): the same handle twice in one batch, or replayed later, is one Lead
    and never rewritten (a user's edits stay). A Task naming that Lead by external id
    (``who_ref``) in the same batch lands on it: Leads first, then Tasks, in one /composite
    call, no query.
    When a duplicate rule answers DUPLICATES_DETECTED (someone already has a Lead or Contact
    with that email), the command is attached to the record Salesforce's ``duplicateResut``
    names: audited SKIPPED with that Id, no Lead created, no dead letter; a matched Lead is
    given the external id, so its Task lands on it too."""
    env = env_factory()
    seeded = env.seed({"Contact": [{"LastName": "Known", "Email": "known@example.com"}],
                       "Lead": [{"LastName": "Manual", "Company": "Typed by a rep",
                                 "Email": "manual@example.com"}]})
    contact, manual = seeded["Contact"][0], seeded["Lead"][0]

    def lead(cid: str, handle: str, last: str) -> dict[str, Any]:
        return env.op_command(cid, "UpsertLead", {
            "external_id_field": "Front_Handle__c", "external_id": handle, "first_name": None,
            "last_name": last, "company": "[not provided]", "email": handle, "phone": None,
            "lead_source": "Other", "owner_id": None})

    def task(mid: str, handle: str) -> dict[str, Any]:
        cmd = env.command(mid, who_ref={"sobject": "Lead", "field": "Front_Handle__c",
                                        "value": handle}, what_ref=None)
        cmd["command_id"] = f"t-{mid}"
        return cmd

    cmds = [lead("l-1", "new@example.com", "New"), lead("l-2", "new@example.com", "New"),
            lead("l-dup", "known@example.com", "Known"), lead("l-man", "manual@example.com", "M"),
            task("m-new", "new@example.com"), task("m-man", "manual@example.com")]
    env.send_commands(cmds)
    run = running(SalesforceSink(env.settings))
    assert env.committed_all(timeout=30), repr(run.error)
    by = _audit_by_command(env, {c["command_id"] for c in cmds})
    mine = [r for r in env.rows("Lead").values() if r.get("Front_Handle__c") == "new@example.com"]
    assert len(mine) == 1
    new_lead = mine[0]["Id"]
    assert {k: [a["outcome"] for a in v] for k, v in by.items()} == {
        "l-1": ["CREATED"], "l-2": ["SKIPPED"], "l-dup": ["SKIPPED"], "l-man": ["SKIPPED"],
        "t-m-new": ["CREATED"], "t-m-man": ["CREATED"]}
    assert by["l-1"][0]["record_id"] == by["l-2"][0]["record_id"] == new_lead
    assert by["l-dup"][0]["record_id"] == contact and by["l-man"][0]["record_id"] == manual
    leads = env.rows("Lead")
    assert len(leads) == 2  # the new one and the rep's; none for the Contact's email
    assert leads[manual]["Front_Handle__c"] == "manual@example.com"
    assert leads[manual]["Company"] == "Typed by a rep"
    tasks = {t[EXT]: t for t in env.tasks(["m-new", "m-man"])}
    assert tasks["m-new"]["WhoId"] == new_lead and tasks["m-man"]["WhoId"] == manual
    assert env.deadletters() == []
    # describe + limits; one /composite call (the Leads, then the Tasks); two single-record
    # calls for the two duplicate matches (read duplicateResut) and one to give the rep's
    # Lead its handle; m-man's Task again, on that Lead's Id (the call had refused it: its
    # Lead, by handle, did not exist yet). No query anywhere.
    assert run.sink.stats["api_calls"] == START_CALLS + 1 + 2 + 1 + 1, run.sink.stats
    # A replay of l-1 after a rep renamed the Lead: nothing written, the rename stays.
    connect(env.settings.salesforce).client.restful(f"sobjects/Lead/{new_lead}", method="PATCH",
                                                    json={"LastName": "Renamed"})
    env.send_commands([lead("l-1", "new@example.com", "New")])
    assert env.committed_all(timeout=30), repr(run.error)
    assert [r["LastName"] for r in env.rows("Lead").values()
            if r.get("Front_Handle__c") == "new@example.com"] == ["Renamed"]


def test_a_flush_of_new_leads_and_their_tasks_is_one_api_call_and_a_bad_record_dead_letters_alone(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """Issue: with a fifth of the messages from unknown senders the sink spent 0.015 calls a
    message, because a flush wrote its Leads in one sObject Collections call and its Tasks
    in another. Now the flush's collections requests are the subrequests of one /composite
    call (one API call, in order: the Leads, then the Tasks naming them by external id).
    What the org shows: one API call for the flush, every Lead made, every Task on its
    Lead; a Task Salesforce refuses inside the Tasks' subrequest is dead-lettered alone,
    with Salesforce's reason, and its Lead and the other Tasks are written."""
    env = env_factory()
    tag = uuid.uuid4().hex[:6]
    handles = [f"new{i}-{tag}@example.com" for i in range(3)]

    def lead(handle: str) -> dict[str, Any]:
        return env.op_command(f"l-{handle}", "UpsertLead", {
            "external_id_field": "Front_Handle__c", "external_id": handle, "first_name": None,
            "last_name": handle.split("@")[0], "company": "[not provided]", "email": handle,
            "phone": None, "lead_source": "Other", "owner_id": None})

    def task(mid: str, handle: str, **op: Any) -> dict[str, Any]:
        cmd = env.command(mid, who_ref={"sobject": "Lead", "field": "Front_Handle__c",
                                        "value": handle}, what_ref=None, **op)
        cmd["command_id"] = f"t-{mid}"
        return cmd

    mids = [f"m-{tag}-{i}" for i in range(3)]
    bad = f"m-{tag}-bad"
    cmds = [*(lead(h) for h in handles), *(task(m, h) for m, h in zip(mids, handles, strict=True)),
            task(bad, handles[0], status="Not a status")]
    env.send_commands(cmds)
    run = running(SalesforceSink(env.settings))
    assert env.committed_all(timeout=30), repr(run.error)
    by = _audit_by_command(env, {c["command_id"] for c in cmds})

    # One API call for the whole flush, counted by the org (describes and /limits at start).
    by_kind = env.sf.get("/__admin/stats").json()["by_kind"]
    assert {k: n for k, n in by_kind.items() if k not in ("describe", "limits")} == {"composite": 1}, by_kind
    assert run.sink.stats["api_calls"] == START_CALLS + 1, run.sink.stats

    leads = {r["Front_Handle__c"]: r["Id"] for r in env.rows("Lead").values() if r.get("Front_Handle__c")}
    assert set(leads) == set(handles)
    tasks = {t[EXT]: t for t in env.tasks([*mids, bad])}
    assert set(tasks) == set(mids)
    assert {m: tasks[m]["WhoId"] for m in mids} == {m: leads[h] for m, h in zip(mids, handles, strict=True)}

    dead = env.deadletters()
    assert len(dead) == 1, dead
    original = env.serde.decode(env.topics.commands_salesforce, dead[0]["original_value"])
    assert original["command_id"] == f"t-{bad}"
    assert "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" in dead[0]["error_message"]
    assert {k: [a["outcome"] for a in v] for k, v in by.items()} == {
        **{f"l-{h}": ["CREATED"] for h in handles}, **{f"t-{m}": ["CREATED"] for m in mids},
        f"t-{bad}": ["DEAD_LETTERED"]}
    assert "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" in (by[f"t-{bad}"][0]["error"] or "")
    # The one call is shared by the seven records it carried.
    assert sum(v[0]["api_calls"]["salesforce.rest"] for v in by.values()) == pytest.approx(1.0)


def test_one_invalid_record_in_a_batch_of_200_is_dead_lettered_the_199_written_after_a_new_login(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """200 Task commands in one batch, one carrying a value Salesforce refuses: one
    collections call writes the 199 and answers the one with its error, which lands in
    ``deadletter`` with that error. The session had expired before the batch
    (INVALID_SESSION_ID): the sink logs in again and the batch is written once."""
    env = env_factory(sink={"batch_wait_ms": 2000})
    run = running(SalesforceSink(env.settings))
    run.wait_until_assigned(env)
    assert env.sf.post("/__admin/sessions/expire").json()["expired"] >= 1
    ids = env.send(199, key=lambda i: "one")
    bad = env.send(1, key=lambda i: "one", status="Not a status")
    assert env.committed_all(timeout=30), repr(run.error)
    assert len(env.tasks(ids)) == 199 and env.tasks(bad) == []
    dead = env.deadletters()
    assert len(dead) == 1 and "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" in dead[0]["error_message"]
    audit = env.audit()
    assert outcomes(audit, ids) == ["CREATED"] * 199 and outcomes(audit, bad) == ["DEAD_LETTERED"]
    # describe, limits, the refused call (session expired), the batch: one write for 200.
    assert run.sink.stats["api_calls"] == START_CALLS + 2, run.sink.stats
    run.stop()
    # Replaying the command topic from the start (a new group) writes nothing new.
    replay = env.replay_settings()
    again = running(SalesforceSink(replay))
    assert env.committed_all(timeout=30), repr(again.error)
    assert len(env.tasks(ids)) == 199 and env.tasks(bad) == []
    assert outcomes(env.audit(), ids) == sorted(["CREATED", "SKIPPED"] * 199)


def _feed_check(env: Env, expected: dict[str, str]) -> list[str]:
    """Problems with the org's FeedItems against ``expected`` (body -> parent, each once)."""
    rows = list(env.rows("FeedItem").values())
    problems = []
    for body, parent in expected.items():
        n = len([r for r in rows if r["Body"] == body and r["ParentId"] == parent])
        if n != 1:
            problems.append(f"{body!r} on {parent}: {n} FeedItems")
    return problems


@pytest.mark.parametrize("recovery", ["ledger", "broken"])
def test_feed_items_are_posted_once_across_replays_and_a_crash_inside_the_call(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running],
        recovery: str) -> None:
    """FeedItem has no external id; the ledger (salesforce.ledger) makes each note happen
    once. A PostFeedItem and a CloseCase's resolution note are posted; a replay of the
    whole command topic (a new consumer group) posts nothing, at no API cost. A crash inside
    the call is staged as it happens: the ledger says INTENT for two keys, and the org holds
    the FeedItem of one of them (the call took effect, the APPLIED never reached Kafka); the
    restarted sink finds that one and posts only the other. ``broken`` runs the same with the
    crash check switched off, and the check must then see the doubled note: it guards the
    test itself."""
    env = env_factory()
    case = env.seed({"Case": [{"Subject": "Help", "Front_Conversation_Id__c": "cnv_feed"}]})["Case"][0]
    opp = env.seed({"Opportunity": [{"Name": "Deal", "StageName": "Prospecting",
                                     "CloseDate": "2026-12-31"}]})["Opportunity"][0]
    first = [env.op_command("f-note", "PostFeedItem", {"parent_id": opp, "body": "Renewal risk flagged in Front"}),
             env.op_command("f-close", "CloseCase", {"case_id": None, "front_conversation_id": "cnv_feed",
                                                     "status": "Closed", "resolution_note": "Solved: reset the key"})]
    # Re-delivered next to its original, in the same batch: posted once.
    again = env.op_command("f-note-again", "PostFeedItem", {"parent_id": opp, "body": "Renewal risk flagged in Front"})
    again["idempotency_key"] = "f-note"
    env.send_commands([*first, again])
    sink = SalesforceSink(env.settings)
    run = running(sink)
    assert env.committed_all(timeout=30), repr(run.error)
    by = _audit_by_command(env, {"f-note", "f-close", "f-note-again"})
    assert [a["outcome"] for a in by["f-note"]] == ["CREATED"]
    assert [a["outcome"] for a in by["f-note-again"]] == ["SKIPPED"]
    assert by["f-note-again"][0]["record_id"] == by["f-note"][0]["record_id"]
    assert [a["outcome"] for a in by["f-close"]] == ["UPDATED"] and by["f-close"][0]["record_id"] == case
    assert env.rows("Case")[case]["Status"] == "Closed"
    assert _feed_check(env, {"Renewal risk flagged in Front": opp, "Solved: reset the key": case}) == []
    run.stop()

    # The crash: INTENT for two keys; the first one's FeedItem exists in the org.
    posted = env.sf.post("/__admin/seed", json={"records": {"FeedItem": [
        {"ParentId": opp, "Body": "Crashed after the call"}]}})
    posted.raise_for_status()
    for key in ("f-crash-after", "f-crash-before"):
        env.producer.produce(env.topics.salesforce_ledger, key=key.encode(), value=env.serde.encode(
            env.topics.salesforce_ledger, {"idempotency_key": key, "command_id": key,
                                           "operation": "PostFeedItem", "state": "INTENT",
                                           "target_id": opp, "result_id": None, "marker": None,
                                           "at": int(time.time() * 1000)}))
    env.producer.flush(10)
    env.send_commands([
        env.op_command("f-crash-after", "PostFeedItem", {"parent_id": opp, "body": "Crashed after the call"}),
        env.op_command("f-crash-before", "PostFeedItem", {"parent_id": opp, "body": "Crashed before the call"})])
    # ...and a replay of everything from the start, by a new group.
    replay = env.replay_settings()
    sink = SalesforceSink(replay)
    if recovery == "broken":
        sink._recover_feed = lambda items: items  # type: ignore[method-assign]
    calls_before = env.api_calls()
    run = running(sink)
    assert env.committed_all(timeout=30), repr(run.error)
    problems = _feed_check(env, {"Renewal risk flagged in Front": opp, "Solved: reset the key": case,
                                 "Crashed after the call": opp, "Crashed before the call": opp})
    if recovery == "broken":
        assert problems == [f"'Crashed after the call' on {opp}: 2 FeedItems"]
        return
    assert problems == []
    by = _audit_by_command(env, {"f-note", "f-close", "f-crash-after", "f-crash-before"})
    assert [a["outcome"] for a in by["f-note"]] == ["CREATED", "SKIPPED"]
    assert [a["outcome"] for a in by["f-crash-after"]] == ["SKIPPED"]
    assert [a["outcome"] for a in by["f-crash-before"]] == ["CREATED"]
    # login, describe, limits; the Case query and update again (a Case update is
    # idempotent, its note is not re-posted); the one crash query; one FeedItem create.
    assert env.api_calls() - calls_before <= START_CALLS + 1 + 2 + 1 + 1, env.sf.get("/__admin/stats").json()


@pytest.mark.parametrize("ledger", ["kept", "broken"])
def test_a_replayed_stage_move_does_not_undo_a_change_made_since(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running],
        ledger: str) -> None:
    """A tag moved an Opportunity to Negotiation/Review; a person then moved it to Closed Won in
    Salesforce. Replaying the command topic (a new consumer group, as ``frontforce replay``
    does after an outage) must not move it back: an applied UpdateRecord is in the ledger,
    and its replay is audited SKIPPED with no call. ``broken`` replays with a sink that
    ignores the ledger for updates, and the check must then see the stage moved back."""
    from frontforce.salesforce import connect

    env = env_factory()
    opp = env.seed({"Opportunity": [{"Name": "Deal", "StageName": "Prospecting",
                                     "CloseDate": "2026-12-31"}]})["Opportunity"][0]
    env.send_commands([env.op_command("stage-evt1", "UpdateRecord", {
        "sobject": "Opportunity", "record_id": opp, "fields": {"StageName": "Negotiation/Review"},
        "only_if_blank": []})])
    run = running(SalesforceSink(env.settings))
    assert env.committed_all(timeout=30), repr(run.error)
    assert env.rows("Opportunity")[opp]["StageName"] == "Negotiation/Review"
    run.stop()
    person = connect(env.settings.salesforce).client
    person.headers.pop("Sforce-Call-Options", None)
    person.restful(f"sobjects/Opportunity/{opp}", method="PATCH", json={"StageName": "Closed Won"})
    replay = env.replay_settings()
    sink = SalesforceSink(replay)
    if ledger == "broken":
        sink._applied_before = lambda it: False  # type: ignore[method-assign]
    run = running(sink)
    assert env.committed_all(timeout=30), repr(run.error)
    stage = env.rows("Opportunity")[opp]["StageName"]
    if ledger == "broken":
        assert stage == "Negotiation/Review"  # the check sees a replay that undoes a person's change
        return
    assert stage == "Closed Won"
    by = _audit_by_command(env, {"stage-evt1"})
    assert [a["outcome"] for a in by["stage-evt1"]] == ["UPDATED", "SKIPPED"]


@pytest.mark.parametrize("twins", ["kept", "merged"])
def test_two_updates_with_one_idempotency_key_in_one_flush_apply_the_first_only(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running],
        twins: str) -> None:
    """Two UpdateRecord commands under one idempotency key reach the sink in one flush (the
    worker re-read a tag removal after a rebalance and emitted its revert again; or a
    command re-delivered next to its original). The key is applied once: the first
    command moves the stage, the second is audited SKIPPED. The ledger alone skips a key
    applied in an earlier flush only; ``merged`` runs a sink without the in-flush check,
    and the check must then see both applied, the second's stage winning."""
    env = env_factory()
    opp = env.seed({"Opportunity": [{"Name": "Deal", "StageName": "Prospecting",
                                     "CloseDate": "2026-12-31"}]})["Opportunity"][0]
    first = env.op_command("revert-1", "UpdateRecord", {
        "sobject": "Opportunity", "record_id": opp, "fields": {"StageName": "Qualification"},
        "only_if_blank": []})
    second = env.op_command("revert-2", "UpdateRecord", {
        "sobject": "Opportunity", "record_id": opp, "fields": {"StageName": "Proposal/Price Quote"},
        "only_if_blank": []})
    second["idempotency_key"] = first["idempotency_key"]
    env.send_commands([first, second])  # both on the topic before the sink starts: one flush
    sink = SalesforceSink(env.settings)
    if twins == "merged":
        sink._twin_waits = lambda it, firsts: False  # type: ignore[method-assign]
    run = running(sink)
    assert env.committed_all(timeout=30), repr(run.error)
    by = _audit_by_command(env, {"revert-1", "revert-2"})
    stage = env.rows("Opportunity")[opp]["StageName"]
    if twins == "merged":
        assert stage == "Proposal/Price Quote"
        assert [a["outcome"] for a in by["revert-2"]] == ["UPDATED"]
        return
    assert stage == "Qualification"
    assert [a["outcome"] for a in by["revert-1"]] == ["UPDATED"]
    assert [a["outcome"] for a in by["revert-2"]] == ["SKIPPED"]


@pytest.mark.parametrize("ledger", ["kept", "broken"])
def test_a_replayed_case_close_does_not_close_a_case_reopened_since(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running],
        ledger: str) -> None:
    """A conversation archived in Front closed its Case with a resolution note; a person then
    reopened the Case in Salesforce. Replaying the command topic (or the worker handling the
    archive again after a rebalance) must not close it again: the applied status is in the
    ledger, the replay is audited SKIPPED with no call, and the note is not posted twice.
    ``broken`` replays with a sink that ignores the ledger for the status, and the check must
    then see the Case closed again."""
    from frontforce.salesforce import connect

    env = env_factory()
    case = env.seed({"Case": [{"Subject": "Help", "Status": "New",
                               "Front_Conversation_Id__c": "cnv_reopen"}]})["Case"][0]
    env.send_commands([env.op_command("close-evt1", "CloseCase", {
        "case_id": None, "front_conversation_id": "cnv_reopen", "status": "Closed",
        "resolution_note": "Resolved in Front."})])
    run = running(SalesforceSink(env.settings))
    assert env.committed_all(timeout=30), repr(run.error)
    assert env.rows("Case")[case]["Status"] == "Closed"
    run.stop()
    person = connect(env.settings.salesforce).client
    person.headers.pop("Sforce-Call-Options", None)
    person.restful(f"sobjects/Case/{case}", method="PATCH", json={"Status": "Working"})
    sink = SalesforceSink(env.replay_settings())
    if ledger == "broken":
        sink._closed_before = lambda items: None  # type: ignore[method-assign]
    run = running(sink)
    assert env.committed_all(timeout=30), repr(run.error)
    status = env.rows("Case")[case]["Status"]
    if ledger == "broken":
        assert status == "Closed"  # the check sees a replay that undoes a person's change
        return
    assert status == "Working"
    notes = [f for f in env.rows("FeedItem").values() if f.get("ParentId") == case]
    assert len(notes) == 1, notes
    by = _audit_by_command(env, {"close-evt1"})
    assert [a["outcome"] for a in by["close-evt1"]] == ["UPDATED", "SKIPPED"]
    assert run.sink.stats["api_calls"] == START_CALLS, run.sink.stats  # no query, no write


def test_only_if_blank_fields_are_written_only_where_salesforce_has_no_value(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """UpdateRecord.only_if_blank: the sink reads those fields first (one collections
    retrieve per sObject and batch) and writes only the blank ones, so a Contact's phone a
    user typed stays; a command whose every field is already filled is audited SKIPPED with
    no write; a field Salesforce refuses to read dead-letters only its own command."""
    env = env_factory()
    contacts = env.seed({"Contact": [
        {"LastName": "A", "Email": "a@example.com", "Phone": "+14155550000"},
        {"LastName": "B", "Email": "b@example.com", "Phone": "+14155550001", "Title": "CEO"},
    ]})["Contact"]
    a, b = contacts
    cmds = [
        env.op_command("b-a", "UpdateRecord", {"sobject": "Contact", "record_id": a,
                       "fields": {"Phone": "+14155559999", "Title": "VP", "MobilePhone": "+14155557777"},
                       "only_if_blank": ["Phone", "Title"]}),
        env.op_command("b-b", "UpdateRecord", {"sobject": "Contact", "record_id": b,
                       "fields": {"Phone": "+14155559998", "Title": "CTO"},
                       "only_if_blank": ["Phone", "Title"]}),
        env.op_command("b-bad", "UpdateRecord", {"sobject": "Contact", "record_id": b,
                       "fields": {"Nope__c": "x"}, "only_if_blank": ["Nope__c"]}),
    ]
    env.send_commands(cmds)
    run = running(SalesforceSink(env.settings))
    assert env.committed_all(timeout=30), repr(run.error)
    by = _audit_by_command(env, {c["command_id"] for c in cmds})
    assert {k: [x["outcome"] for x in v] for k, v in by.items()} == {
        "b-a": ["UPDATED"], "b-b": ["SKIPPED"], "b-bad": ["DEAD_LETTERED"]}
    assert by["b-b"][0]["record_id"] == b and by["b-b"][0]["api_calls"]["salesforce.rest"] > 0
    rows = env.rows("Contact")
    assert rows[a]["Phone"] == "+14155550000"  # filled before: kept
    assert rows[a]["Title"] == "VP" and rows[a]["MobilePhone"] == "+14155557777"
    assert rows[b]["Phone"] == "+14155550001" and rows[b]["Title"] == "CEO"
    dead = env.deadletters()
    assert len(dead) == 1 and "Nope__c" in dead[0]["error_message"]
    assert run.alive(), repr(run.error)


def test_close_case_by_conversation_finds_the_case_with_one_query_and_never_creates_one(
        env_factory: Callable[..., Env], running: Callable[[SalesforceSink], Running]) -> None:
    """CloseCase that knows only the Front conversation: one SOQL query for the batch finds
    the Cases by Front_Conversation_Id__c, then one collections update closes them. A
    conversation without a Case is audited SKIPPED with the reason, no dead letter; no Case is created (an
    upsert on the external id would have created a closed Case that never existed)."""
    env = env_factory()
    case = env.seed({"Case": [{"Subject": "Help", "Front_Conversation_Id__c": "cnv_one"}]})["Case"][0]
    cmds = [env.op_command(cid, "CloseCase", {"case_id": None, "front_conversation_id": cnv,
                                              "status": "Closed", "resolution_note": None})
            for cid, cnv in (("k-one", "cnv_one"), ("k-none", "cnv_none"))]
    env.send_commands(cmds)
    run = running(SalesforceSink(env.settings))
    assert env.committed_all(timeout=30), repr(run.error)
    by = _audit_by_command(env, {c["command_id"] for c in cmds})
    assert [x["outcome"] for x in by["k-one"]] == ["UPDATED"] and by["k-one"][0]["record_id"] == case
    assert [x["outcome"] for x in by["k-none"]] == ["SKIPPED"]
    assert "cnv_none" in (by["k-none"][0]["error"] or "")
    assert env.deadletters() == []
    cases = env.rows("Case")
    assert len(cases) == 1 and cases[case]["Status"] == "Closed"
    assert run.sink.stats["api_calls"] == START_CALLS + 2, run.sink.stats  # describes, limits; query, update
