"""``python -m tests.slow_tag_worker worker -c FILE``: the stream worker with a wider window
in the stage-tag agent: once a tag's stage command is stored, the agent waits
``FRONTFORCE_TEST_TAG_WRITE_DELAY_S`` seconds before it writes the Account's context. The
account-context agent meanwhile takes in whatever Salesforce changes come (the tag's own
stage change among them). Nothing else differs: the real worker must give the same
result at any timing, and this one only makes a rare timing certain.

With ``FRONTFORCE_TEST_NO_KEY_LOCK=1`` the two agents also stop taking turns on a key
(streams/_locks.py): the variant that must lose the change, which keeps
test_replayed_records' context race test from proving nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faust.streams import current_event

from frontforce.cli import main
from streams import _app
from streams._locks import KeyLocks

_delivered = _app.Outbox.delivered
_DELAY_S = float(os.environ.get("FRONTFORCE_TEST_TAG_WRITE_DELAY_S", "8"))


async def _delivered_then_wait(self: _app.Outbox) -> None:
    await _delivered(self)
    event = current_event()
    if event is not None and "tags-by-account" in event.message.topic and any(
            "commands.salesforce" in where for where, _ in self.futures):
        print(f"slow_tag_worker: {event.message.topic}[{event.message.partition}]@"
              f"{event.message.offset} stored; writing the context in {_DELAY_S} s", flush=True)
        await asyncio.sleep(_DELAY_S)
        # The agent writes the context as soon as this returns (no await in between).
        print("slow_tag_worker: writing the context now", flush=True)


_app.Outbox.delivered = _delivered_then_wait  # type: ignore[method-assign]

if os.environ.get("FRONTFORCE_TEST_NO_KEY_LOCK"):
    @asynccontextmanager
    async def _no_lock(self: KeyLocks, key: str) -> AsyncIterator[None]:
        yield

    KeyLocks.hold = _no_lock  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
