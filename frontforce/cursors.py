"""Source cursors on the compacted ``source.cursors`` topic, keyed by source name (STYLE
habit 8): a cursor is written only after the records it covers were acknowledged, so a
source that restarts, anywhere, resumes exactly where the stored records end."""

from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka import KafkaError, Producer

from frontforce.config import Settings
from frontforce.errors import RetriableError
from frontforce.kafka import read_to_end
from frontforce.serialization import Serde


def read_cursor(settings: Settings, serde: Serde, name: str) -> dict[str, Any] | None:
    """The newest cursor stored under ``name`` (its position parsed as JSON), or None."""
    topic = settings.topics.source_cursors
    key = name.encode()
    found: dict[str, Any] | None = None
    try:
        for m in read_to_end(settings.kafka.bootstrap_servers, topic):
            if m.key() != key:
                continue
            if m.value() is None:
                found = None  # tombstone: the cursor was reset
                continue
            record = serde.decode(topic, m.value())
            found = {**record, "position": json.loads(record["position"])}
    except TimeoutError as exc:
        raise RetriableError(str(exc)) from exc
    return found


def write_cursor(settings: Settings, serde: Serde, producer: Producer, name: str,
                 position: dict[str, Any], covered_until_ms: int) -> None:
    """Store a cursor and wait for the broker's acknowledgement (raises ``RetriableError``)."""
    topic = settings.topics.source_cursors
    value = serde.encode(topic, {
        "source": name,
        "position": json.dumps(position, sort_keys=True),
        "covered_until": covered_until_ms,
        "updated_at": int(time.time() * 1000),
    })
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(err.str())

    producer.produce(topic, key=name.encode(), value=value, on_delivery=on_delivery)
    if producer.flush(settings.kafka.delivery_timeout_s * 3) or errors:
        raise RetriableError(f"cursor {name} not acknowledged: {errors[:1]}")
