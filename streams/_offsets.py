"""A guard against Faust's consumer skipping records of a partition.

Faust's consumer can hand an agent a partition's records with a hole in them and then
commit past the hole. Its bookkeeping has known ways of doing that around a rebalance:
a read offset set by a record of the previous generation makes it drop the records it
fetches again ("DROPPED MESSAGE ROFF", faust-streaming/faust#216, robinhood/faust#115);
a hole in the offsets it reads is recorded as a "gap" whose end includes the next record,
and ``Consumer._new_offset`` commits a run of acked offsets that starts one past the
committed offset. The SIGKILL drill saw the result once in 20,000 changes (BENCHMARKS.md:
a Case reopen committed by the case-status agent, never handled).

Every agent therefore checks, before it handles a record of the current generation, that
the record follows the one it handled before in that partition (or, for the first record of
a partition in a generation, the offset the group had committed). When it does not, the
offsets between are read from the broker: a hole of transaction markers, compacted or
deleted records holds no record and is fine; the records a hole does hold were skipped.
The guard hands them to the agent, which handles them, in order, before the record that
showed the hole, and takes them out of Faust's "gap" (which would count them as done: a
commit past them before they are handled). The agent acks in order, so nothing after the
hole is committed before the hole's records are stored. The worker goes on; the group is
not disturbed (the scale-out bench saw 3 of 4 workers stop on such holes at one start).
A hole it cannot read (more than ``limit`` records, or the broker not answering) stops the
worker as before, without acknowledging anything after the hole (exit 75): whoever takes
the partition reads it again from the committed offset, which is before the hole.

Records of an earlier generation still in an agent's batch are handled (at least once) but
not checked: their partition has been sought back to its committed offset since. A hole
made only of records this process handled already (in an earlier generation, before a
rebalance gave it the partition back) loses nothing and passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from faust.types import ConsumerMessage

from frontforce.kafka import group_start, records_between


class OffsetGuard:
    def __init__(self, app: Any, consumer_config: dict[str, Any],
                 skipped: Callable[[Any, int], None],
                 read_hole: Callable[..., list[Any] | None] = records_between,
                 start: Callable[..., int] = group_start,
                 found: Callable[[Any, list[int], int], None] | None = None) -> None:
        self.app = app
        self.config = consumer_config
        self.skipped = skipped  # (message, records checked from): a hole not read back
        self.found = found  # (message, the skipped offsets, checked from): handed to the agent
        self.read_hole = read_hole
        self.start = start
        self.generation: int | None = None
        self.next: dict[Any, int] = {}  # tp -> the offset expected next, this generation
        # tp -> the last run of offsets this process handled, whatever the generation: a hole
        # of records it handled already (before a rebalance) loses nothing.
        self.done: dict[Any, tuple[int, int]] = {}

    async def check(self, message: Any) -> list[ConsumerMessage]:
        """The records Faust skipped before ``message`` in its partition, to be handled
        before it (usually none)."""
        generation = self.app.consumer_generation_id
        if message.generation_id != generation:
            self._handled(message.tp, message.offset)
            return []
        if generation != self.generation:
            self.generation = generation
            self.next.clear()
        tp, offset = message.tp, message.offset
        want = self.next.get(tp)
        if want is None:
            # The committed offset the partition was sought to for this generation (Faust
            # keeps none for a group that never committed, nor for offset 0: then the
            # broker says, once per partition and generation).
            want = self.app.consumer._committed_offset.get(tp)
            if want is None and offset > 0:
                want = await asyncio.to_thread(self.start, self.config, self.app.conf.id,
                                               message.topic, message.partition)
        self.next[tp] = offset + 1
        lo, hi = self.done.get(tp, (0, -1))
        missed: list[ConsumerMessage] = []
        if want is not None and offset > want and not lo <= want <= offset - 1 <= hi:
            try:
                held = await asyncio.to_thread(self.read_hole, self.config, message.topic,
                                               message.partition, want, offset)
            except Exception:  # noqa: BLE001 - cannot tell what the hole holds: stop, as before
                held = None
            if held is None:
                self.skipped(message, want)
                return []  # not reached in the worker (it exits); a test's callback may return
            if held:
                missed = [self._message(m, message, generation) for m in held]
                gap = self.app.consumer._gap.get(tp)
                for m in missed:
                    if gap is not None:
                        gap.chop(m.offset, m.offset + 1)  # done once handled and acked, not before
                    self._handled(tp, m.offset)
                if self.found is not None:
                    self.found(message, [m.offset for m in missed], want)
        self._handled(tp, offset)
        return missed

    @staticmethod
    def _message(m: Any, current: Any, generation: int) -> ConsumerMessage:
        """A Faust message for a record read from the broker (raw key and value, as the
        agents' topics are). A consumer's message: its final ack reaches the consumer's
        bookkeeping (a plain ``Message`` only marks itself acked, and nothing is committed
        past it)."""
        key, value = m.key(), m.value()
        _, ts = m.timestamp()
        return ConsumerMessage(current.topic, current.partition, m.offset(), (ts or 0) / 1000.0,
                               0, m.headers() or [], key, value, None,
                               len(key) if key else 0, len(value) if value else 0,
                               tp=current.tp, generation_id=generation)

    def _handled(self, tp: Any, offset: int) -> None:
        lo, hi = self.done.get(tp, (offset, offset - 1))
        if offset == hi + 1:
            self.done[tp] = (lo, offset)
        elif not lo <= offset <= hi:
            self.done[tp] = (offset, offset)
