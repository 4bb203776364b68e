"""``python -m tests.failing_retraction_worker worker -c FILE``: the stream worker, unchanged,
except that the broker refuses one record: the first retraction (a match-keys entry marked
deleted) of a key that contains ``flaky-`` is not acknowledged (its send fails transiently,
once). The agent must handle the change again and still take the key back.

``tests.failing_retraction_stored_first_worker`` and
``tests.failing_retraction_stale_outbox_worker`` add the faults this one must not show."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from aiokafka.errors import KafkaTimeoutError
from fastavro import parse_schema, schemaless_reader

from frontforce.cli import main
from schemas import load_schema_str
from streams import _app

_ENTRY = parse_schema(json.loads(load_schema_str("match_keys")))
_refused: set[bytes] = set()
_send_to = _app.Outbox.send_to


def _retraction(value: bytes) -> bool:
    entry: Any = schemaless_reader(io.BytesIO(value[5:]), _ENTRY, None)
    return bool(entry["deleted"])


async def _flaky_send_to(self: _app.Outbox, producer: Any, where: str, key: bytes | None, value: bytes,
                         partition: int | None = None,
                         headers: list[tuple[str, bytes]] | None = None) -> None:
    if (where.endswith("-match-keys") and key is not None and b"flaky-" in key
            and key not in _refused and _retraction(value)):
        _refused.add(key)
        print(f"failing_retraction_worker: refused {key.decode()}", flush=True)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_exception(KafkaTimeoutError("injected: not acknowledged"))
        self.futures.append((where, fut))
        return
    await _send_to(self, producer, where, key, value, partition, headers)


_app.Outbox.send_to = _flaky_send_to  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
