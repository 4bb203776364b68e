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
deleted records holds no record and is fine; a hole that holds a record means the record
was skipped. Then the worker stops without acknowledging anything after the hole (exit 75,
as when it cannot make progress): whoever takes the partition reads it again from the
committed offset, which is before the hole. Records of an earlier generation still in an
agent's batch are handled (at least once) but not checked: their partition has been sought
back to its committed offset since. A hole made only of records this process handled
already (in an earlier generation, before a rebalance gave it the partition back) loses
nothing and passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from frontforce.kafka import first_record_between, group_start


class OffsetGuard:
    def __init__(self, app: Any, consumer_config: dict[str, Any],
                 skipped: Callable[[Any, int, int], None],
                 first_record: Callable[..., int | None] = first_record_between,
                 start: Callable[..., int] = group_start) -> None:
        self.app = app
        self.config = consumer_config
        self.skipped = skipped  # (message, first skipped offset, records checked from) -> no return
        self.first_record = first_record
        self.start = start
        self.generation: int | None = None
        self.next: dict[Any, int] = {}  # tp -> the offset expected next, this generation
        # tp -> the last run of offsets this process handled, whatever the generation: a hole
        # of records it handled already (before a rebalance) loses nothing.
        self.done: dict[Any, tuple[int, int]] = {}

    async def check(self, message: Any) -> None:
        generation = self.app.consumer_generation_id
        if message.generation_id != generation:
            self._handled(message.tp, message.offset)
            return
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
        if want is not None and offset > want and not lo <= want <= offset - 1 <= hi:
            found = await asyncio.to_thread(self.first_record, self.config, message.topic,
                                            message.partition, want, offset)
            if found is not None:
                self.skipped(message, found, want)
        self._handled(tp, offset)

    def _handled(self, tp: Any, offset: int) -> None:
        lo, hi = self.done.get(tp, (offset, offset - 1))
        if offset == hi + 1:
            self.done[tp] = (lo, offset)
        elif not lo <= offset <= hi:
            self.done[tp] = (offset, offset)
