"""This source's cursors on ``source.cursors`` (``frontforce.cursors``), one per channel,
keyed ``<prefix>:<topic>`` (``salesforce.cdc:/data/ChangeEvents``). The position is
``{"replay_id": "<base64 of the opaque replay id bytes>"}``; ``covered_until`` is the commit
time up to which every change is on Kafka, where a SOQL re-read starts when the replay id
has expired. The cursor lives in Kafka, not in a local file, so any machine can resume it,
and is written only after the broker acknowledged every change before it (``_source``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer

from frontforce.config import Settings
from frontforce.cursors import read_cursor, write_cursor
from frontforce.serialization import Serde

__all__ = ["Cursor", "load_cursor", "store_cursor"]


@dataclass(frozen=True)
class Cursor:
    key: str
    replay_id: bytes
    covered_until: int  # epoch ms

    @property
    def position(self) -> str:
        """The replay id as logs and ``source_position`` show it (base64)."""
        return base64.b64encode(self.replay_id).decode()


def _ms(value: Any) -> int:
    return int(value.timestamp() * 1000) if hasattr(value, "timestamp") else int(value)


def load_cursor(settings: Settings, serde: Serde, key: str) -> Cursor | None:
    stored = read_cursor(settings, serde, key)
    if stored is None or not isinstance(stored.get("position"), dict):
        return None
    replay = stored["position"].get("replay_id")
    if not replay:
        return None
    return Cursor(key, base64.b64decode(replay), _ms(stored["covered_until"]))


def store_cursor(settings: Settings, serde: Serde, producer: Producer, cursor: Cursor) -> None:
    """Write ``cursor`` and wait for the broker's acknowledgement (``RetriableError``)."""
    write_cursor(settings, serde, producer, cursor.key, {"replay_id": cursor.position},
                 cursor.covered_until)
