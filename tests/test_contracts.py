"""Schema contracts on the real registry: what `frontforce schemas check` and the registry
accept and refuse, and that tools which are not ours read our topics."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import avro.io
import avro.schema
import httpx
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from frontforce.config import Settings, parse_settings
from frontforce.contracts import Contracts, compatibility
from frontforce.localstack import REPO, LocalStack
from frontforce.serialization import Serde, avro_deserializer, avro_serializer, registry_client
from schemas import SCHEMA_FILES

SCHEMAS = REPO / "schemas"


def settings_for(infra: LocalStack, prefix: str) -> Settings:
    return parse_settings(f"""
kafka: {{bootstrap_servers: "{infra.bootstrap}", schema_registry_url: "{infra.registry_url}",
         topic_prefix: "{prefix}"}}
front: {{app_secret: "unused"}}
salesforce: {{login_url: "https://127.0.0.1:1", client_id: "unused", client_secret: "unused"}}
""")


def write_config(infra: LocalStack, prefix: str, path: Path) -> Path:
    path.write_text(f"""
kafka: {{bootstrap_servers: "{infra.bootstrap}", schema_registry_url: "{infra.registry_url}",
         topic_prefix: "{prefix}"}}
front: {{app_secret: "unused"}}
salesforce: {{login_url: "https://127.0.0.1:1", client_id: "unused", client_secret: "unused"}}
""")
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "frontforce", *args], capture_output=True,
                          text=True, cwd=REPO)


def test_current_schemas_are_full_compatible_with_every_released_version(infra: LocalStack) -> None:
    """Guards against a schema edit that the registry would reject at deploy time."""
    prefix = f"c{uuid.uuid4().hex[:6]}."
    settings = settings_for(infra, prefix)
    registry = registry_client(infra.registry_url)
    for logical, file in SCHEMA_FILES.items():
        subject = f"{prefix}{logical}-value"
        registry.set_compatibility(subject, level=compatibility(logical))
        released = sorted((SCHEMAS / "released" / Path(file).stem).glob("v*.avsc"),
                          key=lambda p: int(p.stem[1:]))
        assert released, f"no released version of {file}"
        for version in released:
            registry.register_schema(subject, Schema(version.read_text(), "AVRO"))
    reports = Contracts(settings).check()
    assert [r for r in reports if r.status == "incompatible"] == []
    assert Contracts(settings).register()  # the registry accepts them too


def _modified_schemas(tmp_path: Path, edit: object) -> Path:
    d = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, d, ignore=shutil.ignore_patterns("released", "*.py", "__pycache__"))
    doc = json.loads((d / "front_event.avsc").read_text())
    edit(doc)  # type: ignore[operator]
    (d / "front_event.avsc").write_text(json.dumps(doc))
    return d


@pytest.mark.parametrize(("name", "edit", "words"), [
    ("field removed without default",
     lambda doc: doc["fields"].remove(next(f for f in doc["fields"] if f["name"] == "front_type")),
     "old readers cannot read new records: front_type"),
    ("type changed",
     lambda doc: next(f for f in doc["fields"] if f["name"] == "event_id").update(type="long"),
     "event_id: type changed from string to long"),
    ("new field without default",
     lambda doc: doc["fields"].append({"name": "priority", "type": "int"}),
     "new readers cannot read old records: priority"),
])
def test_incompatible_change_is_refused_by_check_and_by_the_registry(
        infra: LocalStack, tmp_path: Path, name: str, edit: object, words: str) -> None:
    prefix = f"i{uuid.uuid4().hex[:6]}."
    config = write_config(infra, prefix, tmp_path / "ff.yaml")
    assert cli("schemas", "register", "-c", str(config)).returncode == 0
    changed = _modified_schemas(tmp_path, edit)
    result = cli("schemas", "check", "-c", str(config), "--schemas-dir", str(changed))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{prefix}front.events-value: incompatible" in result.stdout
    assert words in result.stdout
    # Only the changed subject is flagged.
    assert f"{prefix}audit-value: unchanged" in result.stdout
    registry = registry_client(infra.registry_url)
    new_schema = Schema((changed / "front_event.avsc").read_text(), "AVRO")
    assert registry.test_compatibility(f"{prefix}front.events-value", new_schema) is False
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(f"{prefix}front.events-value", new_schema)
    assert refused.value.http_status_code == 409
    diff = cli("schemas", "diff", "-c", str(config), "--schemas-dir", str(changed)).stdout
    assert "--- registry: " in diff and "+++ local: schemas/front_event.avsc" in diff


def test_compatible_change_passes_and_old_and_new_readers_interoperate(
        infra: LocalStack, tmp_path: Path) -> None:
    prefix = f"o{uuid.uuid4().hex[:6]}."
    config = write_config(infra, prefix, tmp_path / "ff.yaml")
    assert cli("schemas", "register", "-c", str(config)).returncode == 0
    changed = _modified_schemas(tmp_path, lambda doc: doc["fields"].append(
        {"name": "priority", "type": ["null", "string"], "default": None}))
    result = cli("schemas", "check", "-c", str(config), "--schemas-dir", str(changed))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{prefix}front.events-value: compatible" in result.stdout

    topic = f"{prefix}front.events"
    ctx = SerializationContext(topic, MessageField.VALUE)
    registry = registry_client(infra.registry_url)
    old_str = (SCHEMAS / "front_event.avsc").read_text()
    new_str = (changed / "front_event.avsc").read_text()
    record = {"event_id": "evt_1", "event_type": "TAG", "front_type": "tag", "occurred_at": 1,
              "received_at": 2, "source": "APP_WEBHOOK", "tag_name": "Upsell"}
    new_bytes = avro_serializer(registry, new_str)({**record, "priority": "high"}, ctx)
    old_bytes = avro_serializer(registry, old_str)(record, ctx)
    assert new_bytes[1:5] != old_bytes[1:5]  # two versions, two schema ids
    old_reader = avro_deserializer(registry, old_str)
    new_reader = avro_deserializer(registry, new_str)
    assert old_reader(new_bytes, ctx)["tag_name"] == "Upsell"          # old reads new
    assert "priority" not in old_reader(new_bytes, ctx)
    assert new_reader(old_bytes, ctx)["priority"] is None              # new reads old
    assert new_reader(new_bytes, ctx)["priority"] == "high"


def test_kcat_and_apache_avro_read_our_topics(infra: LocalStack) -> None:
    """A tool that is not ours (kcat, Apache's reference avro library) reads our records."""
    prefix = f"k{uuid.uuid4().hex[:6]}."
    settings = settings_for(infra, prefix)
    topic = settings.topics.salesforce_changes
    record = {"record_id": "003Fe0000000001AAA", "sobject": "Contact", "change_type": "CREATE",
              "commit_timestamp": 1_700_000_000_000, "email": "ada@initech.io",
              "changed_fields": ["Email"], "custom_fields": {"Tier__c": "Gold"}}
    p = Producer({"bootstrap.servers": infra.bootstrap})
    p.produce(topic, key=record["record_id"].encode(), value=Serde(settings).encode(topic, record))
    assert p.flush(10) == 0
    kcat = shutil.which("kcat")
    assert kcat, "kcat is installed by `make tools` (apt package kcat)"
    base = [kcat, "-b", infra.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-c", "1"]
    frame = subprocess.run([*base, "-s", "value=>bI", "-f", "%s"], capture_output=True,
                           text=True, check=True).stdout
    # '>bI' unpacks the magic byte then the big-endian schema id: printed as "0" then the id.
    assert frame.startswith("0"), frame
    schema_id = int(frame[1:])
    raw = subprocess.run([*base, "-f", "%s"], capture_output=True, check=True).stdout
    assert raw[0] == 0 and struct.unpack(">I", raw[1:5])[0] == schema_id
    served = httpx.get(f"{infra.registry_url}/schemas/ids/{schema_id}")
    assert served.status_code == 200
    writer = avro.schema.parse(served.json()["schema"])
    decoded = avro.io.DatumReader(writer).read(avro.io.BinaryDecoder(io.BytesIO(raw[5:])))
    assert decoded["email"] == "ada@initech.io"
    assert decoded["change_type"] == "CREATE"
    assert decoded["custom_fields"] == {"Tier__c": "Gold"}
    assert decoded["commit_timestamp"].timestamp() == 1_700_000_000
