"""Avro in Confluent wire format (magic byte 0 + 4-byte schema id + Avro body), through
confluent-kafka's schema-registry client and fastavro, for every topic.

Subjects follow the topic-name strategy (``<topic>-value``); registration and the
compatibility level live in ``frontforce.contracts``. Readers decode with the local schema as reader schema, so a record
written with an older (or newer, compatible) schema resolves into today's shape.
"""

from __future__ import annotations

import struct
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from frontforce.config import Settings
from frontforce.errors import InvalidRecordError
from schemas import COMMAND_TOPICS, SCHEMA_FILES, WORKER_SCHEMA_FILES, load_schema_str


def registry_client(url: str) -> SchemaRegistryClient:
    """A registry client that never waits forever: httpx's default here is no timeout, and
    one stalled registry request must not hang a worker (the client retries transport
    errors, timeouts included)."""
    return SchemaRegistryClient({"url": url, "timeout": 15})


class Serde:
    """Encode/decode the pipeline's topics. One instance per process; thread-safe enough
    for our use (the registry client caches ids)."""

    def __init__(self, settings: Settings) -> None:
        self.registry = registry_client(settings.kafka.schema_registry_url)
        prefix = settings.kafka.topic_prefix
        # physical topic -> logical topic (the schema's name in schemas/)
        self._logical = {f"{prefix}{logical}": logical for logical in SCHEMA_FILES}
        worker = {**settings.worker_topics, **settings.worker_table_topics}
        self._logical.update({worker[k]: k for k in WORKER_SCHEMA_FILES})
        self._ser: dict[str, AvroSerializer] = {}
        self._de: dict[str, AvroDeserializer] = {}

    def logical(self, topic: str) -> str:
        try:
            return self._logical[topic]
        except KeyError:
            raise KeyError(f"no schema for topic {topic!r}") from None

    def encode(self, topic: str, record: dict[str, Any]) -> bytes:
        ser = self._ser.get(topic)
        if ser is None:
            ser = AvroSerializer(
                self.registry,
                load_schema_str(self.logical(topic)),
                conf={"auto.register.schemas": True},
            )
            self._ser[topic] = ser
        data = ser(record, SerializationContext(topic, MessageField.VALUE))
        assert data is not None
        return bytes(data)

    def decode(self, topic: str, data: bytes | None) -> dict[str, Any]:
        """Decode wire-format bytes; any failure is an ``InvalidRecordError`` (dead-letter)."""
        if data is None:
            raise InvalidRecordError("empty value (tombstone) where a record was expected")
        if len(data) < 5 or data[0] != 0:
            raise InvalidRecordError(
                f"not Confluent wire format (first byte {data[:1].hex() or 'none'}, {len(data)} bytes)"
            )
        de = self._de.get(topic)
        if de is None:
            logical = self.logical(topic)
            de = AvroDeserializer(self.registry, load_schema_str(logical),
                                  return_record_name=logical in COMMAND_TOPICS)
            self._de[topic] = de
        try:
            value = de(data, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:  # registry 404, truncated body, resolution error...
            schema_id = struct.unpack(">I", data[1:5])[0]
            raise InvalidRecordError(
                f"cannot decode with writer schema id {schema_id}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(value, dict):
            raise InvalidRecordError(f"decoded to {type(value).__name__}, expected a record")
        return value
