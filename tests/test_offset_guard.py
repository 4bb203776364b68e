"""streams/_offsets.py on its own: what the guard does with the holes Faust's consumer can
leave in a partition. The worker-level proof (a consumer that really skips a record, on the
real broker, and the variant without the guard that loses it) is in test_worker_delivery."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP, Message
from intervaltree import IntervalTree

from streams._offsets import OffsetGuard

TOPIC = "t"
P0 = TP(TOPIC, 0)


class Held:
    """A record as confluent-kafka hands it over."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return f"k{self._offset}".encode()

    def value(self) -> bytes:
        return f"v{self._offset}".encode()

    def timestamp(self) -> tuple[int, int]:
        return 1, 1_000_000 + self._offset

    def headers(self) -> None:
        return None


def message(offset: int, generation: int = 1) -> Message:
    return Message(TOPIC, 0, offset, 0.0, 0, [], b"k", b"v", None, tp=P0, generation_id=generation)


class Harness:
    def __init__(self, committed: int | None, records: set[int], readable: bool = True) -> None:
        self.gap: dict[TP, IntervalTree] = {P0: IntervalTree()}
        self.app = SimpleNamespace(
            consumer_generation_id=1, conf=SimpleNamespace(id="app"),
            consumer=SimpleNamespace(_committed_offset={P0: committed}, _gap=self.gap))
        self.records = records  # offsets of the partition that hold a record
        self.readable = readable
        self.stopped: list[tuple[int, int]] = []
        self.found: list[list[int]] = []
        self.guard = OffsetGuard(self.app, {}, self.skipped, read_hole=self.read_hole,
                                 start=lambda *a: 0,
                                 found=lambda m, offsets, since: self.found.append(offsets))

    def read_hole(self, config: Any, topic: str, partition: int, start: int, end: int) -> list[Held] | None:
        if not self.readable:
            return None
        return [Held(o) for o in sorted(self.records) if start <= o < end]

    def skipped(self, message: Message, since: int) -> None:
        self.stopped.append((message.offset, since))

    def check(self, offset: int, generation: int = 1) -> list[int]:
        got = asyncio.run(self.guard.check(message(offset, generation)))
        return [m.offset for m in got]


def test_records_in_order_pass_with_nothing_to_add() -> None:
    h = Harness(committed=10, records=set(range(100)))
    assert [h.check(o) for o in (10, 11, 12)] == [[], [], []]
    assert h.stopped == [] and h.found == []


def test_skipped_records_are_handed_back_in_order_and_taken_out_of_fausts_gap() -> None:
    h = Harness(committed=10, records=set(range(100)) - {14})  # 14: a transaction marker
    assert h.check(10) == []
    # Faust skipped 11..16 and recorded them (and 17, its off-by-one) as a gap.
    h.gap[P0].addi(11, 18)
    got = asyncio.run(h.guard.check(message(17)))
    assert [m.offset for m in got] == [11, 12, 13, 15, 16]
    assert got[0].key == b"k11" and got[0].value == b"v11" and got[0].tp == P0
    assert got[0].generation_id == 1 and got[0].timestamp == pytest.approx(1_000.011)
    assert h.found == [[11, 12, 13, 15, 16]]
    # What is left of the gap: only what holds no record to handle (14) and 17, whose own
    # ack comes after the others'.
    assert sorted((i.begin, i.end) for i in h.gap[P0]) == [(14, 15), (17, 18)]
    assert h.check(18) == [] and h.stopped == []


def test_the_ack_of_a_record_handed_back_reaches_the_consumer() -> None:
    """Faust commits only what reached ``Consumer.ack``; a plain ``Message`` stops at marking
    itself acked, and the partition's commits stall at the hole (the scale-out drill saw it)."""
    h = Harness(committed=10, records=set(range(100)))
    acked: list[int] = []
    consumer = SimpleNamespace(ack=lambda m: acked.append(m.offset) or True)
    got = asyncio.run(h.guard.check(message(12)))
    for m in got:
        m.ack(consumer)
    assert acked == [10, 11]


def test_a_hole_of_markers_only_passes() -> None:
    h = Harness(committed=10, records={10, 13})
    assert h.check(10) == [] and h.check(13) == []
    assert h.found == [] and h.stopped == []


def test_the_first_record_of_a_generation_is_checked_against_the_committed_offset() -> None:
    h = Harness(committed=20, records=set(range(100)))
    assert h.check(23) == [20, 21, 22]


def test_a_hole_this_process_handled_before_a_rebalance_passes() -> None:
    h = Harness(committed=10, records=set(range(100)))
    for o in range(10, 16):
        assert h.check(o) == []
    # A rebalance: generation 2, the group committed 12, and Faust hands over 16 first.
    h.app.consumer_generation_id = 2
    h.app.consumer._committed_offset[P0] = 12
    assert h.check(16, generation=2) == []


def test_records_of_an_earlier_generation_are_not_checked() -> None:
    h = Harness(committed=10, records=set(range(100)))
    h.app.consumer_generation_id = 3
    assert h.check(50, generation=2) == []


def test_a_hole_that_cannot_be_read_back_stops_the_worker() -> None:
    h = Harness(committed=10, records=set(range(100)), readable=False)
    assert h.check(10) == []
    assert h.check(15) == []
    assert h.stopped == [(15, 11)]
