"""``python -m tests.skipping_worker worker -c FILE``: the stream worker on a Faust consumer
that skips records, as Faust's consumer can around a rebalance (streams/_offsets.py):
the first ``FRONTFORCE_TEST_SKIP_COUNT`` (default 1) records of a topic whose name contains
``FRONTFORCE_TEST_SKIP_TOPIC`` and whose key contains ``FRONTFORCE_TEST_SKIP_KEY`` are never
handed to the agents (the file ``FRONTFORCE_TEST_SKIP_ONCE`` is made then, with where the last
of them is, so a worker started after this one reads them).
Faust's own bookkeeping then commits past them. With ``FRONTFORCE_TEST_NO_GUARD=1`` the
offset guard is off too: the variant that must lose the record, which keeps
test_worker_delivery's skipped-record test from proving nothing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from faust.transport.consumer import Consumer

from frontforce.cli import main
from streams._offsets import OffsetGuard

_getmany = Consumer.getmany


_skipped: list[str] = []


async def _skipping(self: Consumer, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
    topic = os.environ["FRONTFORCE_TEST_SKIP_TOPIC"]
    key = os.environ["FRONTFORCE_TEST_SKIP_KEY"].encode()
    once = Path(os.environ["FRONTFORCE_TEST_SKIP_ONCE"])
    count = int(os.environ.get("FRONTFORCE_TEST_SKIP_COUNT", "1"))
    async for tp, message in _getmany(self, timeout):
        if topic in message.topic and key in (message.key or b"") and not once.exists():
            _skipped.append(f"{message.topic}[{message.partition}]@{message.offset}")
            if len(_skipped) >= count:
                once.write_text(_skipped[-1])
            continue
        yield tp, message


Consumer.getmany = _skipping  # type: ignore[method-assign]

if os.environ.get("FRONTFORCE_TEST_NO_GUARD"):
    async def _unchecked(self: OffsetGuard, message: Any) -> list[Any]:
        return []

    OffsetGuard.check = _unchecked  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
