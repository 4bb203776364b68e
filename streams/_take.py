"""Batches from a Faust stream without waking up while it is idle.

Faust's ``Stream.noack_take(max_, within)`` waits for its buffer with a timeout of
``within`` in a loop, whether or not anything arrived: every agent wakes up every
``within`` seconds, and each wake-up builds a few futures (mode's ``wait_first``). With the
worker's ten agents at 10 ms that was 1,000 wake-ups a second and about a tenth of a core
for an idle worker (BENCHMARKS.md). ``take_batches`` is the same generator (faust-streaming
0.15.3, ``faust/streams.py``, BSD licence) with one change: while its buffer is empty it
waits for the first value with no timeout, and ``within`` runs from that first value. A
value waits at most ``within`` before its batch is handed over, as before; an idle agent
sleeps until a record or a stop wakes it.

Like ``noack_take`` it acks nothing: the caller acks each event once it is done with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from mode.utils.aiter import aiter
from mode.utils.futures import notify


async def take_batches(stream: Any, max_: int, within: float) -> AsyncGenerator[list[Any], None]:
    """Lists of up to ``max_`` events of ``stream``: what arrived within ``within`` seconds
    of the first one, or sooner when ``max_`` are there."""
    buffer: list[Any] = []
    buffer_full = asyncio.Event()
    buffer_started = asyncio.Event()  # the change: set by the first value of a batch
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future[None] | None = None
    stream_enable_acks: bool = stream.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        try:
            nonlocal buffer_consuming
            if buffer_consuming is not None:
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            # Events, not values: the caller acks them.
            event = stream.current_event
            if event is None:
                raise RuntimeError("take buffer found current_event is None")
            buffer.append(event)
            buffer_started.set()
            if len(buffer) >= max_:
                # Full: hand it over, and add nothing more until it is consumed (never more
                # than max_ values in a batch).
                buffer_full.set()
                buffer_consumed.clear()
                await stream.wait(buffer_consumed)
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:  # noqa: BLE001 - as Faust's: the stream crashes with it
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    # Acks are the caller's.
    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not buffer:
                # Idle: sleep until the first value (or a stop), no timeout.
                await stream.wait_for_stopped(buffer_started)
                if not buffer:
                    continue
            await stream.wait_for_stopped(buffer_full, timeout=within)
            if buffer:
                # Nothing is added while the batch is read.
                buffer_consuming = stream.loop.create_future()
                try:
                    yield list(buffer)
                finally:
                    buffer.clear()
                    notify(buffer_consuming)
                    buffer_full.clear()
                    buffer_started.clear()
                    buffer_consumed.set()
    finally:
        stream.enable_acks = stream_enable_acks
        stream._processors.remove(add_to_buffer)
