#!/usr/bin/env python3
"""Smoke check of the local stack: Kafka + Apicurio's Confluent-compatible schema registry,
driven through the same confluent-kafka client code the pipeline uses.

    python deploy/check_registry.py --registry http://127.0.0.1:8081/apis/ccompat/v7 \
                                    --bootstrap 127.0.0.1:9092

Checks, in order (exit status 1 if any fails, 2 if the stack cannot be reached):
  1. register an Avro schema; set the subject's compatibility to BACKWARD_TRANSITIVE;
  2. AvroSerializer (topic-name subject strategy) -> produce -> consume -> AvroDeserializer,
     the record comes back equal;
  3. the schema id in the wire frame is served by GET /schemas/ids/{id};
  4. re-registering the same schema (fresh client, other whitespace, other JSON key order)
     returns the same id and adds no version;
  5. an incompatible change (new required field, no default) is refused: test_compatibility
     says False and register fails with HTTP 409 and a message;
  6. a compatible change (new optional field with a default) is accepted as version 2;
  7. error bodies are Confluent-shaped (error_code 40401 / 40403 on unknown subject / id).
By default the subject and topic are random and deleted at the end; --topic NAME --keep keeps
them, and a second run with --expect-existing checks they survived a restart.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

V1: dict[str, Any] = {
    "type": "record",
    "name": "SmokeOrder",
    "namespace": "frontforce.smoke",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}
# Same schema, JSON keys in another order (record and fields).
V1_REORDERED: dict[str, Any] = {
    "fields": [
        {"type": "string", "name": "id"},
        {"type": "double", "name": "amount"},
        {"default": None, "type": ["null", "string"], "name": "note"},
    ],
    "namespace": "frontforce.smoke",
    "name": "SmokeOrder",
    "type": "record",
}
# Incompatible for BACKWARD(_TRANSITIVE): a new field without a default cannot be read
# from old data.
V_BREAKING: dict[str, Any] = {**V1, "fields": V1["fields"] + [{"name": "currency", "type": "string"}]}
# Compatible: a new optional field with a default.
V2: dict[str, Any] = {
    **V1,
    "fields": V1["fields"] + [{"name": "channel", "type": "string", "default": "web"}],
}


class Checker:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def ok(self, name: str, cond: bool, detail: str = "") -> bool:
        tag = "ok  " if cond else "FAIL"
        print(f"[{tag}] {name}" + (f": {detail}" if detail else ""), flush=True)
        if not cond:
            self.failures.append(name)
        return cond


def http_get_json(url: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.schemaregistry.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, body


def http_post_json(url: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        body_s = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(body_s)
        except ValueError:
            return e.code, body_s


def avro(d: dict[str, Any], **dumps_kw: Any) -> Schema:
    return Schema(json.dumps(d, **dumps_kw), "AVRO")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--registry",
        default="http://127.0.0.1:8081/apis/ccompat/v7",
        help="Confluent-compatible base URL (default %(default)s)",
    )
    ap.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap (default %(default)s)")
    ap.add_argument("--topic", default=None, help="topic (subject <topic>-value); default random")
    ap.add_argument("--keep", action="store_true", help="keep subject and topic at the end")
    ap.add_argument(
        "--expect-existing", action="store_true", help="fail unless the subject already exists (persistence check)"
    )
    args = ap.parse_args()

    registry = args.registry.rstrip("/")
    topic = args.topic or f"ff-smoke-{uuid.uuid4().hex[:8]}"
    subject = f"{topic}-value"  # topic_subject_name_strategy
    c = Checker()
    t_start = time.monotonic()
    print(f"registry={registry} bootstrap={args.bootstrap} topic={topic} subject={subject}")

    # ---- reachability (exit 2: nothing else makes sense without it)
    try:
        status, body = http_get_json(f"{registry}/subjects")
    except OSError as e:  # connection refused, timeout, DNS
        print(f"[FAIL] GET {registry}/subjects: {e}")
        return 2
    if status != 200:
        print(f"[FAIL] GET {registry}/subjects -> {status} {body}")
        return 2
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    try:
        md = admin.list_topics(timeout=10)
    except KafkaException as e:
        print(f"[FAIL] kafka metadata from {args.bootstrap}: {e}")
        return 2
    c.ok("kafka metadata", bool(md.brokers), f"brokers={sorted(md.brokers)}")

    existing = subject in body
    v1_id_before: int | None = None
    if existing:
        st, b = http_get_json(f"{registry}/subjects/{subject}/versions/1")
        v1_id_before = b.get("id") if st == 200 and isinstance(b, dict) else None
        print(f"subject {subject} already present, version 1 has id {v1_id_before}")
    if args.expect_existing:
        c.ok("subject survived restart", existing and v1_id_before is not None, f"version 1 id={v1_id_before}")

    if topic not in md.topics:
        fs = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        fs[topic].result(timeout=30)

    # ---- 1. register + compatibility level
    sr = SchemaRegistryClient({"url": registry, "timeout": 15})
    schema_id = sr.register_schema(subject, avro(V1))
    c.ok("register v1", isinstance(schema_id, int) and schema_id >= 0, f"id={schema_id}")
    if v1_id_before is not None:
        c.ok("re-register after restart keeps id", schema_id == v1_id_before, f"{schema_id} vs {v1_id_before}")
    sr.set_compatibility(subject_name=subject, level="BACKWARD_TRANSITIVE")
    level = sr.get_compatibility(subject)
    c.ok("subject compatibility", level == "BACKWARD_TRANSITIVE", level)

    # ---- 2. serialize -> produce -> consume -> deserialize
    ser = AvroSerializer(SchemaRegistryClient({"url": registry, "timeout": 15}), json.dumps(V1),
                         conf={"subject.name.strategy.type": "TOPIC"})  # auto-registers
    record_id = f"order-{uuid.uuid4().hex[:6]}"
    record: dict[str, Any] = {"id": record_id, "amount": 12.5, "note": "smoke"}
    value = ser(record, SerializationContext(topic, MessageField.VALUE))
    assert value is not None
    delivered: list[Any] = []
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce(
        topic, value=value, key=record_id.encode(), on_delivery=lambda err, msg: delivered.append((err, msg))
    )
    producer.flush(30)
    err, dmsg = delivered[0] if delivered else ("no delivery report", None)
    if err is not None or dmsg is None:
        c.ok("produce", False, str(err))
        return 1
    c.ok("produce", True, f"partition {dmsg.partition()} offset {dmsg.offset()}")

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"ff-smoke-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, dmsg.partition(), dmsg.offset())])
    got = None
    deadline = time.monotonic() + 30
    while got is None and time.monotonic() < deadline:
        m = consumer.poll(1.0)
        if m is not None and not m.error():
            got = m
    consumer.close()
    raw = got.value() if got is not None else None
    if not c.ok("consume", raw is not None):
        return 1
    assert raw is not None
    frame_id = int.from_bytes(raw[1:5], "big")
    c.ok("wire frame", raw[0] == 0 and frame_id == schema_id, f"magic={raw[0]} id={frame_id}")
    deser = AvroDeserializer(SchemaRegistryClient({"url": registry, "timeout": 15}),
                             conf={"subject.name.strategy.type": "TOPIC"})
    out = deser(raw, SerializationContext(topic, MessageField.VALUE))
    c.ok("deserialized record equals produced record", out == record, str(out))

    # ---- 3. the id in the frame is served by /schemas/ids/{id}
    st, b = http_get_json(f"{registry}/schemas/ids/{frame_id}")
    served = json.loads(b["schema"]) if st == 200 and isinstance(b, dict) and "schema" in b else None
    c.ok(
        "GET /schemas/ids/{id}",
        served is not None
        and served.get("name") == V1["name"]
        and [f["name"] for f in served.get("fields", [])] == [f["name"] for f in V1["fields"]],
        f"HTTP {st}",
    )

    # ---- 4. same schema again: same id, no new version
    versions_before = sr.get_versions(subject)
    for label, sch in [
        ("identical, fresh client", avro(V1)),
        ("other whitespace", avro(V1, indent=4)),
        ("compact separators", avro(V1, separators=(",", ":"))),
        ("other JSON key order", avro(V1_REORDERED)),
    ]:
        rid = SchemaRegistryClient({"url": registry, "timeout": 15}).register_schema(subject, sch)
        c.ok(f"re-register ({label}) keeps id", rid == schema_id, f"{rid} vs {schema_id}")
    lid = SchemaRegistryClient({"url": registry, "timeout": 15}).lookup_schema(subject, avro(V1_REORDERED, indent=2))
    c.ok("lookup_schema (reordered) finds it", lid.schema_id == schema_id, f"id={lid.schema_id}")
    c.ok("no extra versions", sr.get_versions(subject) == versions_before, str(sr.get_versions(subject)))

    # ---- 5. incompatible change refused
    compatible = sr.test_compatibility(subject, avro(V_BREAKING))
    c.ok("test_compatibility(new required field) is False", compatible is False, str(compatible))
    st, b = http_post_json(
        f"{registry}/compatibility/subjects/{subject}/versions/latest?verbose=true",
        {"schema": json.dumps(V_BREAKING)},
    )
    print(f"       verbose compatibility answer: HTTP {st} {json.dumps(b)[:400]}")
    try:
        bad_id = sr.register_schema(subject, avro(V_BREAKING))
        c.ok("register(new required field) refused", False, f"accepted with id {bad_id}")
    except SchemaRegistryError as e:
        c.ok(
            "register(new required field) refused",
            e.http_status_code == 409 and bool(e.error_message),
            f"HTTP {e.http_status_code} error_code={e.error_code} message={e.error_message[:300]!r}",
        )

    # ---- 6. compatible change accepted
    c.ok("test_compatibility(new optional field) is True", sr.test_compatibility(subject, avro(V2)) is True)
    v2_id = sr.register_schema(subject, avro(V2))
    latest = sr.get_latest_version(subject)
    c.ok("register v2", v2_id != schema_id and latest.schema_id == v2_id, f"id={v2_id} latest version={latest.version}")

    # ---- 7. Confluent-shaped errors for unknown things
    try:
        sr.get_latest_version(f"no-such-subject-{uuid.uuid4().hex[:6]}")
        c.ok("unknown subject -> 404/40401", False, "no error")
    except SchemaRegistryError as e:
        c.ok(
            "unknown subject -> 404/40401",
            e.http_status_code == 404 and e.error_code == 40401,
            f"HTTP {e.http_status_code} error_code={e.error_code} {e.error_message!r}",
        )
    try:
        SchemaRegistryClient({"url": registry, "timeout": 15}).get_schema(2_000_000_000)
        c.ok("unknown id -> 404/40403", False, "no error")
    except SchemaRegistryError as e:
        c.ok(
            "unknown id -> 404/40403",
            e.http_status_code == 404 and e.error_code == 40403,
            f"HTTP {e.http_status_code} error_code={e.error_code} {e.error_message!r}",
        )

    # ---- cleanup
    if not args.keep:
        try:
            sr.delete_subject(subject)
            sr.delete_subject(subject, permanent=True)
            gone = subject not in sr.get_subjects()
            c.ok("delete subject (soft + permanent)", gone)
        except SchemaRegistryError as e:
            c.ok(
                "delete subject (soft + permanent)",
                False,
                f"HTTP {e.http_status_code} error_code={e.error_code} {e.error_message!r}",
            )
        admin.delete_topics([topic])[topic].result(timeout=30)

    took = time.monotonic() - t_start
    if c.failures:
        print(f"FAILED {len(c.failures)} check(s) in {took:.1f}s: {', '.join(c.failures)}")
        return 1
    print(f"all checks passed in {took:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
