"""The sink's consumer: which partitions it owns, and the polling that keeps it in its group
while a batch is slow.

librdkafka evicts a member that does not poll within ``max.poll.interval.ms``, and
Salesforce calls, backoffs and quota pauses can take longer than that. So mid-batch the
sink pauses its partitions and keeps polling (``keepalive``): the member stays, no new
records arrive, and rebalance callbacks run. A partition revoked or lost meanwhile ends its
ownership epoch; records read under an ended epoch are neither written nor committed here,
since whoever owns the partition now reads them again from the last committed offset.
"""

from __future__ import annotations

import time

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from frontforce.errors import FatalError, RetriableError

log = structlog.get_logger("sinks.salesforce")

# A commit refused because the group moved on: whoever owns the partitions now reads the
# records again; retrying the commit could only move someone else's offsets.
_GROUP_MOVED_ON = frozenset({
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._NO_OFFSET,
})


class Received:
    """A consumed record and the ownership epoch of its partition when it was read. Its
    coordinates are read from the message once (the sink asks for them several times per
    record and flush round: a frozen dataclass with properties was 5 % of a replay's sink)."""

    __slots__ = ("msg", "epoch", "topic", "partition", "offset", "key")

    def __init__(self, msg: Message, epoch: int) -> None:
        self.msg = msg
        self.epoch = epoch
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        self.topic: str = topic
        self.partition: int = partition
        self.offset: int = offset
        self.key: tuple[str, int] = (topic, partition)


def usable(m: Message) -> bool:
    """False for consumer events that carry no record; ``FatalError`` for a fatal one."""
    err = m.error()
    if err is None:
        return True
    if err.code() == KafkaError._PARTITION_EOF:
        return False
    if err.fatal():
        raise FatalError(f"kafka consumer: {err.str()}")
    log.warning("consumer error", error=err.str())
    return False


class GroupMember:
    def __init__(self, consumer: Consumer, topic: str, gap_budget_s: float) -> None:
        self.consumer = consumer
        self.topic = topic
        # Longest time the sink may go without polling before it polls mid-batch.
        self.gap_budget_s = gap_budget_s
        self._epochs: dict[tuple[str, int], int] = {}
        self._next_epoch = 0
        self._paused = False
        # Partitions assigned since the last batch began: resumed before the next one.
        self._assigned: list[TopicPartition] = []
        self._backlog: list[Received] = []
        self.last_poll = time.monotonic()
        self.max_gap_s = 0.0
        self.revoked = 0
        self.lost = 0

    def subscribe(self) -> None:
        self.consumer.subscribe([self.topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)

    # -- ownership -------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._next_epoch += 1
            self._epochs[(tp.topic, tp.partition)] = self._next_epoch
        # librdkafka keeps a partition's pause across a revoke and a new assignment of it to
        # the same member: paused mid-batch, revoked, and handed back after the batch ended
        # (its ``resume`` found nothing assigned), it would never deliver again.
        self._assigned += partitions
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.revoked += len(partitions)
        self._end(partitions, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.lost += len(partitions)
        self._end(partitions, "lost")

    def _end(self, partitions: list[TopicPartition], why: str) -> None:
        for tp in partitions:
            self._epochs.pop((tp.topic, tp.partition), None)
        self._backlog = [r for r in self._backlog if self.owns(r)]
        log.info(f"partitions {why}", partitions=sorted(tp.partition for tp in partitions),
                 mid_batch=self._paused)

    def owns(self, r: Received) -> bool:
        return self._epochs.get(r.key) == r.epoch

    def _received(self, m: Message) -> Received:
        r = Received(m, 0)
        r.epoch = self._epochs.get(r.key, 0)
        return r

    # -- polling -----------------------------------------------------------------------
    def _polled(self) -> None:
        now = time.monotonic()
        self.max_gap_s = max(self.max_gap_s, now - self.last_poll)
        self.last_poll = now

    def next_batch(self, max_records: int, timeout_s: float) -> list[Received]:
        """Records held back during the last batch first, then newly consumed ones."""
        if self._backlog:
            batch, self._backlog = self._backlog[:max_records], self._backlog[max_records:]
            return batch
        if self._assigned:
            owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
            fresh = [tp for tp in self._assigned if (tp.topic, tp.partition) in owned]
            self._assigned = []
            if fresh:
                self.consumer.resume(fresh)
        msgs = self.consumer.consume(max_records, timeout=timeout_s)
        self._polled()
        return [self._received(m) for m in msgs if usable(m)]

    def keepalive(self, timeout_s: float = 0.0) -> None:
        """Poll with every assigned partition paused: the member stays in the group and
        rebalance callbacks run, but no record is taken out of order."""
        # Every time: a rebalance during the pause may have assigned unpaused partitions.
        self.consumer.pause(self.consumer.assignment())
        self._paused = True
        m = self.consumer.poll(timeout_s)
        self._polled()
        if m is not None and usable(m):
            # Only a partition assigned during this pause can deliver: keep its record for
            # the next batch and pause it like the others.
            r = self._received(m)
            self.consumer.pause([TopicPartition(r.topic, r.partition)])
            self._backlog.append(r)

    def checkpoint(self, need_s: float = 0.0) -> None:
        """Poll now if what comes next (``need_s`` at most) could end past the gap budget."""
        if time.monotonic() - self.last_poll + need_s > self.gap_budget_s:
            self.keepalive(0.0)

    def resume(self) -> None:
        if self._paused:
            self.consumer.resume(self.consumer.assignment())
            self._paused = False

    # -- commit ------------------------------------------------------------------------
    def commit(self, received: list[Received]) -> int:
        """Commit the offset after the last of ``received`` on each partition still owned in
        the epoch it was read; return how many partitions were committed. ``RetriableError``
        when the broker did not take the commit for another reason than a rebalance."""
        last: dict[tuple[str, int], int] = {}
        epochs = self._epochs
        for r in received:
            if epochs.get(r.key) == r.epoch and r.offset > last.get(r.key, -1):
                last[r.key] = r.offset
        if not last:
            return 0
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()],
                                 asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() in _GROUP_MOVED_ON:
                log.warning("commit refused after a rebalance; the records are read again",
                            error=err.str())
                return 0
            if err.fatal():
                raise FatalError(f"kafka commit: {err.str()}") from exc
            raise RetriableError(f"kafka commit: {err.str()}") from exc
        return len(last)

    def close(self) -> None:
        self.consumer.close()
