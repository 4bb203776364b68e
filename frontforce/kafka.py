"""Kafka plumbing shared by sources, streams and sinks: client configs, topics, an async
producer that resolves only when the broker acknowledged the record."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from frontforce.config import Settings
from frontforce.errors import InvalidRecordError, RetriableError


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Idempotent, acks=all producer; murmur2 partitioning like the Java client and Faust,
    so a key lands on the same partition whoever produced it."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": settings.kafka.linger_ms,
        "delivery.timeout.ms": int(settings.kafka.delivery_timeout_s * 1000),
        "request.timeout.ms": min(30000, int(settings.kafka.delivery_timeout_s * 1000)),
    }
    conf.update(extra)
    return conf


def consumer_config(settings: Settings, group_id: str, **extra: Any) -> dict[str, Any]:
    """Offsets are committed by hand, only after the effect is durable."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        # A dead member's partitions are reassigned after 10 s (librdkafka default: 45 s).
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 2000,
    }
    conf.update(extra)
    return conf


def ensure_topics(settings: Settings, names: Iterable[str] | None = None) -> list[str]:
    """Create the pipeline's topics if missing; return the ones created."""
    topics = settings.topics
    # The tables' changelogs too. A Faust worker subscribes to a global table's changelog at
    # start (every partition, to recover and follow it) and ignores it for good if it does
    # not exist yet; and a table whose changelog Faust has not created yet when its source
    # topic's first record arrives fails that record ("the changelog topic ... has 0
    # partitions", which the outage drill saw dead-lettered as 80 poison records).
    changelogs = list(settings.worker_table_topics.values())
    seen = settings.worker_topics["seen"]
    wanted = (list(names) if names is not None
              else [*topics.model_dump().values(), *settings.worker_topics.values(), *changelogs])
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    existing = set(admin.list_topics(timeout=10).topics)
    # Cursors and sink ledgers are state, not history: compacted, keyed. Cursors are a
    # handful of keys (one partition); a ledger grows with the commands it records.
    # What `dlq redrive` re-drove: one key per dead letter (frontforce/ops/dlq.py).
    compacted = {topics.source_cursors, topics.front_ledger, topics.salesforce_ledger,
                 topics.deadletter_redriven, *changelogs}
    # The stream worker's dedupe log: one record per batch, deleted after twice the dedupe
    # window (the fast lane restores what is younger).
    keep_ms = int(2 * settings.worker.dedupe_window_s * 1000) + 3_600_000
    configs = {seen: {"cleanup.policy": "delete", "retention.ms": str(keep_ms)},
               **{n: {"cleanup.policy": "compact"} for n in compacted}}
    single = {topics.source_cursors, topics.deadletter_redriven}
    new = [
        NewTopic(n, num_partitions=1 if n in single else settings.kafka.partitions,
                 replication_factor=settings.kafka.replication_factor,
                 config=configs.get(n, {}))
        for n in wanted
        if n not in existing
    ]
    if not new:
        return []
    created = []
    for name, fut in admin.create_topics(new, operation_timeout=15).items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


class AsyncProducer:
    """confluent-kafka producer for asyncio code: ``await produce(...)`` returns once the
    broker acknowledged the record (acks=all), or raises ``RetriableError``.

    librdkafka calls delivery callbacks from ``poll()``; a daemon thread polls so the event
    loop never blocks on it. The reports one ``poll()`` served reach each loop in one
    wake-up (``call_soon_threadsafe`` per record cost a wake-up of the loop per webhook).
    """

    def __init__(self, conf: dict[str, Any]) -> None:
        self._producer = Producer(conf)
        self._stop = threading.Event()
        # (loop, future, error, message) of the reports not handed to their loop yet
        # (appended by whichever thread serves callbacks: the poll thread, flush at close).
        self._reports: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[Message],
                                   KafkaError | None, Message]] = deque()
        self._thread = threading.Thread(target=self._poll_loop, name="producer-poll", daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)
            self._hand_over()

    def _hand_over(self) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, ...]]] = {}
        while True:
            try:
                loop, fut, err, msg = self._reports.popleft()
            except IndexError:
                break
            by_loop.setdefault(loop, []).append((fut, err, msg))
        for loop, done in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, done)
            except RuntimeError:
                pass  # that loop is closed: nobody waits for these any more

    async def produce(self, topic: str, key: bytes | None, value: bytes | None,
                      headers: list[tuple[str, str | bytes | None]] | None = None) -> Message:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Message] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            # Called in the poll thread (inside poll(), or flush() at close).
            self._reports.append((loop, fut, err, msg))

        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers,
                                       on_delivery=on_delivery)
                break
            except BufferError:
                # Local queue full: let deliveries drain, then try again.
                await asyncio.sleep(0.05)
            except KafkaException as exc:
                # Refused before it was queued: too large can never be sent; the rest
                # (unknown topic while the cluster starts, fatal producer state) may pass.
                err = exc.args[0]
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise InvalidRecordError(f"kafka refused the record: {err.str()}") from exc
                raise RetriableError(f"kafka: {err.str()}") from exc
        return await fut

    def close(self, timeout: float = 10.0) -> int:
        remaining = self._producer.flush(timeout)
        self._stop.set()
        self._thread.join(timeout=2)
        self._hand_over()
        return int(remaining)


def _settle(done: list[tuple[Any, ...]]) -> None:
    for fut, err, msg in done:
        if fut.done():
            continue
        if err is not None:
            fut.set_exception(RetriableError(f"kafka: {err.str()}"))
        else:
            fut.set_result(msg)


def watermarks(consumer: Any, tp: Any, timeout_s: float = 30.0) -> tuple[int, int]:
    """``get_watermark_offsets`` that waits out a partition without a leader yet (a topic
    created a moment ago, a broker restarting) instead of failing the caller."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0]
            if not err.retriable() and err.code() not in _NO_LEADER_YET or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


_NO_LEADER_YET = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                            KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TRANSPORT})


def read_to_end(bootstrap: str, topic: str, timeout_s: float = 30.0) -> Iterator[Message]:
    """Every record of ``topic`` up to its end as of the call, read by assignment to the high
    watermarks (no group join to wait for, no guessing from idle time); ``TimeoutError`` if
    the end is not reached within ``timeout_s``. Nothing is committed."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": "read_committed"})
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return
        ends: dict[int, int] = {}
        assignment = []
        for p in meta.partitions:
            low, high = watermarks(c, TopicPartition(topic, p))
            if high > low:
                ends[p] = high
                assignment.append(TopicPartition(topic, p, low))
        c.assign(assignment)
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(ends)} not read to the end")
            m = c.poll(0.5)
            if m is None:
                # A partition whose last records are transaction markers (never delivered):
                # done once the position is past the end taken at the call.
                for tp in c.position([TopicPartition(topic, p) for p in ends]):
                    if tp.offset >= ends.get(tp.partition, 0):
                        ends.pop(tp.partition, None)
                continue
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    ends.pop(m.partition() or 0, None)
                continue
            p = m.partition() or 0
            end = ends.get(p)
            if end is None or (m.offset() or 0) >= end:
                continue  # written after the call
            yield m
            if (m.offset() or 0) >= end - 1:
                # The end as of the call: a partition still being written to gives no EOF
                # while every fetch finds a new record.
                ends.pop(p, None)
    finally:
        c.close()


def records_between(config: dict[str, Any], topic: str, partition: int, start: int, end: int,
                    limit: int = 10_000, timeout_s: float = 30.0) -> list[Message] | None:
    """The records (committed: transaction markers and aborted records are not records) that
    ``partition`` holds in ``[start, end)``, in order; offsets with no record are markers,
    compacted or deleted ones. None when there are more than ``limit`` of them. ``config``:
    a consumer config (its group is never joined nor committed)."""
    c = Consumer({**config, "group.id": f"probe-{uuid.uuid4()}", "enable.auto.commit": False,
                  "enable.partition.eof": True, "isolation.level": "read_committed"})
    tp = TopicPartition(topic, partition, start)
    found: list[Message] = []
    try:
        c.assign([tp])
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}[{partition}]: offsets {start}..{end - 1} not read in {timeout_s:.0f} s")
            m = c.poll(0.5)
            if m is None:
                if c.position([TopicPartition(topic, partition)])[0].offset >= end:
                    return found
                continue
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return found
                continue
            offset = m.offset() or 0
            if offset >= end:
                return found
            found.append(m)
            if len(found) > limit:
                return None
    finally:
        c.close()


def group_start(config: dict[str, Any], group: str, topic: str, partition: int,
                timeout_s: float = 30.0) -> int:
    """Where ``group`` starts reading ``partition``: its committed offset, or the partition's
    first offset when it has none (``auto.offset.reset`` earliest). Asked without joining
    the group."""
    c = Consumer({**config, "group.id": group, "enable.auto.commit": False})
    try:
        tp = TopicPartition(topic, partition)
        [committed] = c.committed([tp], timeout=timeout_s)
        if committed.offset is not None and committed.offset >= 0:
            return int(committed.offset)
        return watermarks(c, tp, timeout_s)[0]
    finally:
        c.close()
