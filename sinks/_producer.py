"""What a sink produces (audit, dead letters, ledger entries) and the wait for the broker's
acknowledgement of all of it before the sink commits its offsets (STYLE habit 2). Shared by
the Salesforce and the Front sink.

While it waits, and whenever the local queue is full, it polls the sink's consumer (its
partitions paused) so the member stays in its group; a record the broker refused is
produced again by the next ``await_acks``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, Message, Producer

from frontforce import metrics
from frontforce.config import Settings
from frontforce.errors import FatalError, InvalidRecordError, RetriableError
from frontforce.kafka import producer_config
from frontforce.serialization import Serde

if TYPE_CHECKING:  # types only: sinks.salesforce imports this module
    from sinks.salesforce._member import GroupMember
    from sinks.salesforce._retry import RetryPolicy


@dataclass(frozen=True)
class _Out:
    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone (compacted topics)


class AckedProducer:
    def __init__(self, settings: Settings, serde: Serde, member: GroupMember,
                 retry: RetryPolicy) -> None:
        self._producer = Producer(producer_config(settings))
        self._serde = serde
        self._member = member
        self._retry = retry
        self._delivery_timeout_s = settings.kafka.delivery_timeout_s
        self._failed: list[tuple[_Out, KafkaError]] = []
        self._unpolled = 0  # records sent since the last poll(0)
        self._out_counters: dict[str, Any] = {}  # topic -> its records-out counter

    def produce(self, topic: str, key: bytes | None, record: dict[str, Any]) -> None:
        """Encode ``record`` (a registry hiccup retried in place) and send it."""
        def encode() -> bytes:
            try:
                return self._serde.encode(topic, record)
            except InvalidRecordError as exc:
                # Our own record does not fit our own schema: a bug, not data.
                raise FatalError(f"cannot encode a {topic} record: {exc}") from exc

        try:
            # The retry policy only when the first try fails: building one per record was
            # a tenth of the Salesforce sink's CPU (an audit record per command).
            value = encode()
        except RetriableError:
            value = self._retry.run(encode, what=f"encoding a {topic} record")
        self.send(topic, key, value)

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self._send(_Out(topic, key, value))

    def _send(self, out: _Out) -> None:
        counter = self._out_counters.get(out.topic)
        if counter is None:
            counter = self._out_counters[out.topic] = metrics.RECORDS_OUT.labels(out.topic)

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self._failed.append((out, err))
            else:
                counter.inc()

        while True:
            try:
                self._producer.produce(out.topic, key=out.key, value=out.value, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.1)
                self._member.checkpoint()
        # Delivery reports served now and then (await_acks serves the rest): a poll per
        # record cost more than the produce.
        self._unpolled += 1
        if self._unpolled >= 256:
            self._unpolled = 0
            self._producer.poll(0)

    def await_acks(self) -> None:
        """Return once the broker acknowledged every record produced so far; produce again
        what it refused. ``RetriableError`` while some are refused or unanswered."""
        failed, self._failed = self._failed, []
        for out, _ in failed:
            self._send(out)
        deadline = time.monotonic() + self._delivery_timeout_s + 5
        while True:
            remaining = self._producer.flush(min(1.0, self._member.gap_budget_s / 4))
            self._member.checkpoint()
            if remaining == 0 or time.monotonic() > deadline:
                break
        if self._failed or remaining:
            fatal = [err for _, err in self._failed if err.fatal()]
            if fatal:
                raise FatalError(f"kafka producer: {fatal[0].str()}")
            errors = sorted({err.str() for _, err in self._failed})
            raise RetriableError(f"{len(self._failed)} record(s) refused by the broker, "
                                 f"{remaining} unanswered: {errors[:3]}")

    def flush(self, timeout_s: float) -> None:
        self._producer.flush(timeout_s)
