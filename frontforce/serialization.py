"""Avro in Confluent wire format (magic byte 0 + 4-byte schema id + Avro body), through
confluent-kafka's schema-registry client and fastavro, for every topic.

Subjects follow the topic-name strategy (``<topic>-value``); registration and the
compatibility level live in ``frontforce.contracts``. Readers decode with the local schema as reader schema, so a record
written with an older (or newer, compatible) schema resolves into today's shape.
"""

from __future__ import annotations

import io
import json
import struct
import time
from typing import Any

import cavro
import httpx
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from frontforce.config import Settings
from frontforce.errors import InvalidRecordError, RetriableError
from schemas import COMMAND_TOPICS, SCHEMA_FILES, WORKER_SCHEMA_FILES, load_schema_str

REGISTRY_TIMEOUT_S = 15
# Subjects follow the topic-name strategy. Pinned: confluent-kafka 2.15's default is the
# "associated" strategy, which first asks ``GET /associations/...`` for every topic; Apicurio
# does not serve that route (404) and the extra round trip is where a fresh-clone run once
# hung (issue 7). Our subjects are ``<topic>-value`` by contract, so there is nothing to ask.
SUBJECT_STRATEGY = {"subject.name.strategy.type": "TOPIC"}
# Error codes the registry gives for "this schema id does not exist" (Confluent: 40403).
_SCHEMA_NOT_FOUND = 40403
# A 404 for a schema id is confirmed once more after this pause before the record is called
# poison: a registry that is still replaying its storage after a restart may not know an id
# for a moment.
_CONFIRM_404_S = 1.0
# The plain decode (the stream worker's hot path, issue 10) goes through cavro, whose
# types are compiled once per schema: a third of fastavro's time for a Front event, same
# values (tests/test_serialization.py compares the two). Records as dicts, unions as their
# values, like fastavro's schemaless_reader; no logical types (the schema is stripped).
_CAVRO_PLAIN = cavro.DEFAULT_OPTIONS.replace(record_decodes_to_dict=True)
# The sinks' decode of a command written with our own schema (logical types as Python dates
# and datetimes, unions of records as (name, value), as the confluent deserializer's
# return_record_name gives) goes through cavro too: 5.6 us instead of fastavro's 14. Whatever
# cavro refuses or fails on goes to fastavro, which decides (a value, or
# InvalidRecordError); tests/test_serialization.py compares the two on random records of
# every schema, both ways (with and without record names). The worker's own decodes (its
# agents' events, its tables' values) stay fastavro's: the gain was measured in the sinks.
_CAVRO_COMMANDS = _CAVRO_PLAIN.replace(union_decodes_to=cavro.UnionDecodeOption.TYPE_TUPLE_IF_RECORD)
# The receiver's encode (a Front event per webhook) goes through cavro too: 13 us instead of
# fastavro's 40 for a webhook's event; so does every audit record (a command's outcome in
# each sink, a match in the worker): 7.5 us instead of 12. Whatever cavro encodes is byte for
# byte what fastavro writes (tests/test_serialization.py, random records and edge values);
# whatever it refuses (a float or a bool where a long is, which fastavro takes) goes to
# fastavro, which decides.
# Only for topics whose schema's unions are all [null, X] and whose timestamps arrive as
# numbers: elsewhere the two differ on dates and on dicts in unions.
_CAVRO_ENCODE = frozenset({"front.events", "audit", "seen"})
# The commands too (the stream worker writes one per routed event: 10 % of its time in
# fastavro's writer during a replay, py-spy), whose one union of records, ``operation``, the
# worker always writes in fastavro's tuple notation ``(full name, value)``: cavro takes that
# notation too and writes the named branch. A record whose such union is not a tuple (a
# plain dict, which each library may match to a different branch) goes to fastavro; so does
# a date or a datetime where a timestamp is (the schema cavro gets has no logical types).
_CAVRO_ENCODE_TUPLES = frozenset({"commands.salesforce", "commands.front"})
_CAVRO_TUPLE_OPTIONS = cavro.DEFAULT_OPTIONS.replace(allow_tuple_notation=True)
_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")


def _record_unions(schema: dict[str, Any]) -> tuple[str, ...] | None:
    """The top-level fields of ``schema`` whose type is a union of several records (to be
    given in tuple notation), or None when such a union sits deeper (not compiled)."""
    def records_in(t: Any) -> int:
        return sum(1 for x in t if isinstance(x, dict | str) and x not in _PRIMITIVES) if isinstance(t, list) else 0

    def deeper(t: Any) -> bool:
        if isinstance(t, list):
            return records_in(t) > 1 or any(deeper(x) for x in t)
        if isinstance(t, dict):
            kind = t.get("type")
            if kind == "record":
                return any(deeper(f["type"]) for f in t["fields"])
            if kind == "array":
                return deeper(t["items"])
            if kind == "map":
                return deeper(t["values"])
        return False

    top = []
    for f in schema["fields"]:
        t = f["type"]
        if records_in(t) > 1:
            top.append(f["name"])
            if any(deeper(x) for x in t):
                return None
        elif deeper(t):
            return None
    return tuple(top)


def registry_client(url: str) -> SchemaRegistryClient:
    """A registry client that never waits forever: httpx's default here is no timeout, and
    one stalled registry request must not hang a worker (the client retries transport
    errors, timeouts included)."""
    return SchemaRegistryClient({"url": url, "timeout": REGISTRY_TIMEOUT_S})


def avro_serializer(registry: SchemaRegistryClient, schema_str: str, **conf: Any) -> AvroSerializer:
    return AvroSerializer(registry, schema_str, conf={**SUBJECT_STRATEGY, **conf})


def avro_deserializer(registry: SchemaRegistryClient, schema_str: str | None = None,
                      **kwargs: Any) -> AvroDeserializer:
    return AvroDeserializer(registry, schema_str, conf=dict(SUBJECT_STRATEGY), **kwargs)


def is_transient_registry_error(exc: BaseException) -> bool:
    """A registry failure that may go away by itself: no answer, a timeout, a 5xx, a 408/429.
    A 4xx answer (unknown id, incompatible schema, bad request) is the registry's verdict."""
    seen: BaseException | None = exc
    for _ in range(4):  # the serializers may wrap the client's error
        if seen is None:
            return False
        if isinstance(seen, httpx.HTTPError | OSError | TimeoutError):
            return True
        if isinstance(seen, SchemaRegistryError):
            status = seen.http_status_code
            return status < 0 or status >= 500 or status in (408, 429)
        seen = seen.__cause__ or seen.__context__
    return False


def _no_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _no_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_no_logical_types(x) for x in schema]
    return schema


def _read_record(schema_id: int, read: Any, *args: Any) -> dict[str, Any]:
    """``read(*args)`` (a fast-path decoder): a record, or ``InvalidRecordError`` when the body
    does not decode (truncated, bad UTF-8, resolution error) or is not a record."""
    try:
        value = read(*args)
    except Exception as exc:  # noqa: BLE001 - truncated body, resolution error...
        raise InvalidRecordError(
            f"cannot decode with writer schema id {schema_id}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidRecordError(f"decoded to {type(value).__name__}, expected a record")
    return value


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
        # The hot path. Once the registry client has answered for a topic (its schema
        # registered, its id known) or for a writer schema id, records go straight through
        # fastavro with schemas parsed once: confluent's (de)serializers re-expand the reader
        # schema and run the data-contract rule machinery on every record, which cost more
        # than the rest of the stream worker together. Same bytes, same values.
        # topic -> (wire header, fastavro's schema, cavro's or None, the fields that must be
        # tuples for cavro to write the record)
        self._fast_enc: dict[str, tuple[bytes, Any, cavro.Schema | None, tuple[str, ...]]] = {}
        self._fast_dec: dict[tuple[str, int], tuple[Any, Any, bool]] = {}
        self._fast_plain: dict[tuple[str, int], tuple[Any, Any, bool]] = {}
        self._compiled: dict[tuple[str, int], cavro.Schema] = {}
        self._compiled_full: dict[tuple[str, int], cavro.Schema] = {}

    def logical(self, topic: str) -> str:
        try:
            return self._logical[topic]
        except KeyError:
            raise KeyError(f"no schema for topic {topic!r}") from None

    def encode(self, topic: str, record: dict[str, Any]) -> bytes:
        """Encode a record. ``RetriableError`` when the registry could not be reached (try
        again), ``InvalidRecordError`` when the record does not fit the schema or the registry
        refuses the schema (it never will fit: dead-letter what it came from)."""
        fast = self._fast_enc.get(topic)
        if fast is not None:
            header, parsed, compiled, tuples = fast
            if compiled is not None:
                try:
                    if not tuples or all(type(record[f]) is tuple for f in tuples):
                        return header + compiled.binary_encode(record)
                except Exception:  # noqa: BLE001, S110 - fastavro, below, has the last word
                    pass
            out = io.BytesIO()
            out.write(header)
            try:
                schemaless_writer(out, parsed, record)
            except Exception as exc:  # noqa: BLE001 - a record that does not fit the schema
                raise InvalidRecordError(f"cannot encode for {topic}: {type(exc).__name__}: {exc}") from exc
            return out.getvalue()
        ser = self._ser.get(topic)
        if ser is None:
            ser = avro_serializer(self.registry, load_schema_str(self.logical(topic)),
                                  **{"auto.register.schemas": True})
            self._ser[topic] = ser
        try:
            data = ser(record, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:  # noqa: BLE001 - classified: transient or permanent
            if is_transient_registry_error(exc):
                raise RetriableError(f"schema registry unavailable encoding {topic}: "
                                     f"{type(exc).__name__}: {exc}") from exc
            raise InvalidRecordError(f"cannot encode for {topic}: {type(exc).__name__}: {exc}") from exc
        assert data is not None
        logical = self.logical(topic)
        schema = json.loads(load_schema_str(logical))
        plain = _no_logical_types(schema)
        compiled, unions = None, _record_unions(plain)
        if logical in _CAVRO_ENCODE and unions == ():
            compiled = cavro.Schema(json.dumps(plain), options=cavro.DEFAULT_OPTIONS)
        elif logical in _CAVRO_ENCODE_TUPLES and unions is not None:
            compiled = cavro.Schema(json.dumps(plain), options=_CAVRO_TUPLE_OPTIONS)
        self._fast_enc[topic] = (bytes(data[:5]), parse_schema(schema), compiled, unions or ())
        return bytes(data)

    def decode(self, topic: str, data: bytes | None, plain: bool = False) -> dict[str, Any]:
        """Decode wire-format bytes. ``plain``: timestamps and dates as the numbers they are
        stored as (no logical-type conversion: a third of the read's cost; the stream
        worker's hot path reads them as milliseconds anyway).

        Only a permanent fault is an ``InvalidRecordError`` (dead-letter): not wire format,
        a schema id the registry confirms it does not have, a body that does not decode.
        A registry that does not answer, times out or fails with a 5xx raises
        ``RetriableError``: the record is good, the caller retries it in place and must not
        acknowledge it meanwhile (STYLE habit 17)."""
        if data is None:
            raise InvalidRecordError("empty value (tombstone) where a record was expected")
        if len(data) < 5 or data[0] != 0:
            raise InvalidRecordError(
                f"not Confluent wire format (first byte {data[:1].hex() or 'none'}, {len(data)} bytes)"
            )
        schema_id = struct.unpack(">I", data[1:5])[0]
        fast = self._fast_dec.get((topic, schema_id))
        if plain and fast is not None:
            compiled = self._compiled.get((topic, schema_id))
            if compiled is not None:
                return _read_record(schema_id, compiled.binary_decode, data[5:])
            fast = self._fast_plain.get((topic, schema_id)) or self._plain(topic, schema_id, fast)
        if fast is not None:
            full = None if plain else self._compiled_full.get((topic, schema_id))
            if full is not None:
                try:
                    value = full.binary_decode(data[5:])
                except Exception:  # noqa: BLE001, S110 - fastavro, below, has the last word
                    pass
                else:
                    if isinstance(value, dict):
                        return value
            writer, reader, named = fast
            return _read_record(schema_id, schemaless_reader, io.BytesIO(data[5:]), writer, reader, named)
        self._writer_schema(schema_id)  # fills the client's cache; classifies registry faults
        de = self._de.get(topic)
        if de is None:
            logical = self.logical(topic)
            de = avro_deserializer(self.registry, load_schema_str(logical),
                                   return_record_name=logical in COMMAND_TOPICS)
            self._de[topic] = de
        try:
            value = de(data, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:  # noqa: BLE001 - truncated body, resolution error...
            if is_transient_registry_error(exc):
                raise RetriableError(f"schema registry unavailable decoding {topic}: {exc}") from exc
            raise InvalidRecordError(
                f"cannot decode with writer schema id {schema_id}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(value, dict):
            raise InvalidRecordError(f"decoded to {type(value).__name__}, expected a record")
        logical = self.logical(topic)
        writer_str = str(self.registry.get_schema(schema_id).schema_str)  # cached by the client
        writer_json, reader_json = json.loads(writer_str), json.loads(load_schema_str(logical))
        # Written with our own schema (the usual case): no resolution, which costs fastavro
        # about half as much again as the read itself.
        self._fast_dec[(topic, schema_id)] = (
            parse_schema(writer_json),
            None if writer_json == reader_json else parse_schema(reader_json),
            logical in COMMAND_TOPICS)
        if writer_json == reader_json and logical in COMMAND_TOPICS:
            self._compiled_full[(topic, schema_id)] = cavro.Schema(
                json.dumps(writer_json), options=_CAVRO_COMMANDS)
        if plain:  # the same plain values as every later record of this schema id
            return self.decode(topic, data, plain=True)
        return value

    def _plain(self, topic: str, schema_id: int, fast: tuple[Any, Any, bool]) -> tuple[Any, Any, bool]:
        writer_str = str(self.registry.get_schema(schema_id).schema_str)  # cached by the client
        writer_json = _no_logical_types(json.loads(writer_str))
        reader_json = _no_logical_types(json.loads(load_schema_str(self.logical(topic))))
        entry = (parse_schema(writer_json),
                 None if writer_json == reader_json else parse_schema(reader_json), fast[2])
        self._fast_plain[(topic, schema_id)] = entry
        if writer_json == reader_json and not fast[2]:
            # Written with our own schema and no record names asked for: the compiled decoder.
            # (Resolution between two schemas, and unions as (name, value), stay fastavro's.)
            self._compiled[(topic, schema_id)] = cavro.Schema(json.dumps(writer_json), options=_CAVRO_PLAIN)
        return entry

    def _writer_schema(self, schema_id: int) -> None:
        """Make sure the registry knows ``schema_id`` (answered from the client's cache after
        the first time). A 404, confirmed once after a short pause, is permanent; no answer
        at all is transient."""
        for confirm in (False, True):
            try:
                self.registry.get_schema(schema_id)
                return
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404 or exc.error_code == _SCHEMA_NOT_FOUND:
                    if not confirm:
                        time.sleep(_CONFIRM_404_S)
                        continue
                    raise InvalidRecordError(
                        f"cannot decode with writer schema id {schema_id}: the registry has no such "
                        f"schema ({exc.http_status_code} {exc.error_code}: {exc.error_message})") from exc
                if is_transient_registry_error(exc):
                    raise RetriableError(f"schema registry error for id {schema_id}: {exc}") from exc
                raise InvalidRecordError(
                    f"cannot decode with writer schema id {schema_id}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - httpx transport errors, timeouts...
                if is_transient_registry_error(exc):
                    raise RetriableError(f"schema registry unreachable for id {schema_id}: "
                                         f"{type(exc).__name__}: {exc}") from exc
                raise
