"""The Front sink's ledger: what it did with each command, on the compacted topic
``front.ledger`` keyed by the command's idempotency key (schema ``sink_ledger.avsc``).

States: INTENT (written and acknowledged before the Front call), APPLIED (after it). A key
with no entry was never attempted, or was dead-lettered (the sink writes a tombstone then,
so a replay tries it again and dead-letters it again, with Front's answer of that day).

The sink keeps the whole ledger in memory (one small entry per key). It reads the topic to
its end at start and catches up again before every batch, because another member of the
group may have written keys of a partition that has just moved here (a rebalance after a
crash): the previous owner's APPLIED must be seen before its records are replayed.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from frontforce.config import Settings
from frontforce.errors import InvalidRecordError, RetriableError
from frontforce.kafka import watermarks
from frontforce.serialization import Serde

log = structlog.get_logger("sinks.front")

INTENT = "INTENT"
APPLIED = "APPLIED"


@dataclass(frozen=True)
class Entry:
    state: str
    command_id: str
    operation: str
    target_id: str | None
    result_id: str | None
    marker: str | None


class Ledger:
    def __init__(self, settings: Settings, serde: Serde) -> None:
        self.topic = settings.topics.front_ledger
        self.serde = serde
        self.entries: dict[str, Entry] = {}
        # Contact handle -> (when, the Front contact id) of the last applied
        # UpdateContactFields for it; the id None when it found no Front contact (use case
        # 3's ``if_missed``). By the record's time: the topic's partitions interleave keys.
        self._contacts: dict[str, tuple[int, str | None]] = {}
        self.read = 0  # records read from the topic so far
        self._consumer = Consumer({
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"front-ledger-reader-{uuid.uuid4()}",  # assigned, never committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            # The end-offset queries of a catch-up wait behind a fetch that long-polls the
            # broker on the same connection (default 500 ms each): keep that wait short.
            "fetch.wait.max.ms": 50,
        })
        self._next: dict[int, int] = {}  # partition -> next offset to read
        self._partitions: list[int] = []  # the topic's partitions, read once

    def close(self) -> None:
        self._consumer.close()

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def note(self, key: str, entry: Entry | None) -> None:
        """What this sink just wrote (before the topic echoes it back)."""
        if entry is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = entry
            self._index(entry, int(time.time() * 1000))

    def contact_reached(self, handle: str) -> str | None:
        """The Front contact the last context applied to ``handle`` reached, if any."""
        return self._contacts.get(handle, (0, None))[1]

    def _index(self, entry: Entry, at: int) -> None:
        if entry.state == APPLIED and entry.operation == "UpdateContactFields" and entry.target_id:
            if at >= self._contacts.get(entry.target_id, (0, None))[0]:
                self._contacts[entry.target_id] = (at, entry.result_id)

    def catch_up(self, timeout_s: float) -> None:
        """Read the ledger up to its end as of now. ``RetriableError`` when the end is not
        reached in ``timeout_s`` (the broker is slow or away: try again, commit nothing)."""
        if not self._partitions:
            try:
                meta = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            except KafkaException as exc:
                raise RetriableError(f"ledger topic {self.topic}: no metadata: {exc}") from exc
            if meta is None or meta.error is not None:
                raise RetriableError(f"ledger topic {self.topic} is not available: "
                                     f"{meta.error if meta is not None else 'missing'}")
            self._partitions = sorted(meta.partitions)
        ends: dict[int, int] = {}
        new: list[TopicPartition] = []
        for p in self._partitions:
            try:
                low, high = watermarks(self._consumer, TopicPartition(self.topic, p))
            except KafkaException as exc:  # the broker away (a restart): try again later
                raise RetriableError(f"ledger {self.topic}[{p}]: end offsets not known: {exc}") from exc
            ends[p] = high
            if p not in self._next:
                self._next[p] = low
                new.append(TopicPartition(self.topic, p, low))
        if new:
            self._consumer.incremental_assign(new)
        pending = {p for p, high in ends.items() if self._next[p] < high}

        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise RetriableError(f"ledger {self.topic}: partitions {sorted(pending)} not read "
                                     f"to their end in {timeout_s:g}s")
            for m in self._consumer.consume(500, timeout=0.2):
                p = m.partition() or 0
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        self._next[p] = max(self._next.get(p, 0), m.offset() or 0)
                    else:
                        log.warning("ledger read error", error=err.str())
                else:
                    self._next[p] = (m.offset() or 0) + 1
                    self._apply(m.key(), m.value())
                if self._next.get(p, 0) >= ends.get(p, 0):
                    pending.discard(p)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        k = key.decode()
        self.read += 1
        if value is None:  # tombstone: dead-lettered, or forgotten on purpose
            self.entries.pop(k, None)
            return
        try:
            rec = self.serde.decode(self.topic, value)
        except InvalidRecordError as exc:
            log.warning("unreadable ledger record ignored", key=k, error=str(exc))
            return
        entry = Entry(str(rec["state"]), rec["command_id"], rec["operation"],
                      rec.get("target_id"), rec.get("result_id"), rec.get("marker"))
        self.entries[k] = entry
        at = rec.get("at") or 0
        self._index(entry, int(at.timestamp() * 1000) if isinstance(at, datetime) else int(at))
