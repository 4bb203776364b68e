"""What the chaos scenario watches to kill at a chosen moment instead of a random one, and
to know when a restarted process is back: fault rules and rows of the Salesforce emulator,
the members of a consumer group, the tail of a topic, and webhook traffic from "Front"."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, ConsumerGroupState, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from emulators.front import WebhookEmitter
from tests.test_pipeline import KNOWN, Pipeline, event

T = TypeVar("T")

# The sink's sObject Collections create of Tasks: POST .../composite/sobjects
TASK_UPSERT = {"method": "POST", "path_regex": r"^/services/data/v[\d.]+/composite/sobjects$"}


def poll(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.05,
         feed: Callable[[], None] | None = None, feed_every: float = 2.0) -> T:
    """``probe()`` until it returns something (not None/False/empty); raise after
    ``timeout`` naming ``what``. ``feed`` (e.g. send one more webhook) runs every
    ``feed_every`` seconds meanwhile, for moments that need traffic to arrive."""
    deadline = time.monotonic() + timeout
    fed = time.monotonic()
    while True:
        found = probe()
        if found:
            return found
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        if feed is not None and now - fed >= feed_every:
            feed()
            fed = now
        time.sleep(every)


class Org:
    """The Salesforce emulator's admin API (``/__admin``)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.http = pipeline.admin

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        r = self.http.request(method, f"/__admin/{path}", json=body)
        r.raise_for_status()
        return r.json()

    def configure(self, **values: Any) -> dict[str, Any]:
        config: dict[str, Any] = self._call("POST", "config", values)
        return config

    def add_fault(self, **rule: Any) -> str:
        rule_id: str = self._call("POST", "faults", rule)["rules"][0]["id"]
        return rule_id

    def fault(self, rule_id: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [
            r for r in self._call("GET", "faults")["rules"] if r["id"] == rule_id]
        assert found, f"fault rule {rule_id} is gone"
        return found[0]

    def remove_fault(self, rule_id: str) -> None:
        self.http.delete(f"/__admin/faults/{rule_id}")

    def tasks(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("GET", "records/Task")["records"]
        return rows

    def task_stamps(self) -> dict[str, str]:
        """Front message id -> SystemModstamp of every live Task carrying one."""
        return {t["Front_Message_Id__c"]: t["SystemModstamp"] for t in self.tasks()
                if t.get("Front_Message_Id__c") and not t.get("IsDeleted")}


class Groups:
    """Who owns what in a consumer group, as the group coordinator sees it."""

    def __init__(self, bootstrap: str) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap})

    def members(self, group: str) -> tuple[ConsumerGroupState, dict[str, list[TopicPartition]]]:
        desc = self.admin.describe_consumer_groups([group], request_timeout=10)[group].result()
        return desc.state, {m.member_id: list(m.assignment.topic_partitions)
                            for m in desc.members}

    def wait_owned(self, group: str, gone: set[str], timeout: float = 60.0) -> set[str]:
        """Wait until ``group`` is Stable, none of the ``gone`` members (the killed
        process) is left in it, and a member owns partitions; return the member ids."""

        def owned() -> set[str] | None:
            state, members = self.members(group)
            if (state == ConsumerGroupState.STABLE and not set(members) & gone
                    and any(members.values())):
                return set(members)
            return None

        return poll(f"a new owner of group {group}", owned, timeout, every=0.2)


class Tail:
    """New records of a topic from now on (assigned partitions, no group, no commits)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap,
                                  "group.id": f"chaos-tail-{uuid.uuid4()}",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        ends = []
        for p in meta.partitions:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends.append(TopicPartition(topic, p, high))
        self.consumer.assign(ends)

    def next(self, timeout: float, feed: Callable[[], None] | None = None) -> Message:
        def one() -> Message | None:
            m = self.consumer.poll(0.02)
            return m if m is not None and m.error() is None else None

        return poll("a new record", one, timeout, every=0.0, feed=feed)

    def close(self) -> None:
        self.consumer.close()


class _TracedEmitter(WebhookEmitter):
    """Front's webhook delivery (retries on connection errors and non-2xx), telling when a
    POST is on the wire."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.in_flight = threading.Event()

    def _post(self, body: bytes, extra: dict[str, str] | None = None,
              timestamp_ms: str | None = None) -> Any:
        self.in_flight.set()
        try:
            return super()._post(body, extra, timestamp_ms)
        finally:
            self.in_flight.clear()


@dataclass
class Front:
    """Inbound emails from the KNOWN contacts, delivered as signed webhooks by a background
    thread. A message counts as delivered only on a 2xx (the receiver answers 2xx only once
    Kafka has it); until then it is retried, as Front retries."""

    pipeline: Pipeline
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    delivered: dict[str, str] = field(default_factory=dict)  # message id -> sender email
    undelivered: dict[str, str] = field(default_factory=dict)
    sent: int = 0

    def __post_init__(self) -> None:
        stack = self.pipeline.stack
        # ~40 s of retries (backoff 0.2 s doubling to 2 s): longer than a receiver restart.
        self.emitter = _TracedEmitter(stack.receiver_url, stack.app_secret.encode(),
                                      retries=25)
        self._wanted = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="front", daemon=True)
        self._thread.start()

    def send(self, n: int = 1) -> None:
        with self._cond:
            self._wanted += n
            self._cond.notify_all()

    def message_ids(self, start: int, stop: int) -> set[str]:
        """Ids of the ``start``-th to ``stop``-th requested messages."""
        return {f"msg_{self.tag}{i}" for i in range(start, stop)}

    @property
    def requested(self) -> int:
        with self._cond:
            return self._wanted

    def _run(self) -> None:
        while True:
            with self._cond:
                while self.sent >= self._wanted and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                i = self.sent
            sender = KNOWN[i % len(KNOWN)].email
            status = self.emitter.deliver(event(sender, self.tag, i))
            with self._cond:
                target = self.delivered if 200 <= status < 300 else self.undelivered
                target[f"msg_{self.tag}{i}"] = sender
                self.sent += 1
                self._cond.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.sent >= self._wanted, timeout):
                raise AssertionError(f"Front still delivering: {self.sent}/{self._wanted}")

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(60)
        self.emitter.close()

    @property
    def retried(self) -> int:
        """POSTs beyond one per message: deliveries that failed and were tried again."""
        return self.emitter.attempts - self.sent
