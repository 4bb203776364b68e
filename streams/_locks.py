"""One read-modify-write of a table key at a time, across the agents of a worker.

Faust runs each agent as its own task, and a table can have more than one agent writing
it: the account-context table is written by the agent of Salesforce changes re-keyed by
Account and by the agent of stage tags; the record-keys table by the change router and by
the agent that adds new handles. A writer that reads a key, waits (for the broker's ack of
what it sent: the table must not say "sent" before it is stored) and then writes what it
read plus its own change puts back, over any write another agent made to that key
meanwhile, the value from before it. The scale-out drill lost a Salesforce change that
way (BENCHMARKS.md): handling an untag, the tag agent wrote back an Account's context as it
was before the tag's own stage change, with the "sent" digest of before; the untag's
revert, back to the old stage, then matched that digest and was never sent to Front.

``async with locks.hold(key):`` around the read, the wait and the write makes the writers
of one key take turns. A lock exists while someone holds or waits for it. One task never
holds two of them, so they cannot deadlock. Uncontended, taking one does not yield.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyLocks:
    __slots__ = ("_locks",)

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]
