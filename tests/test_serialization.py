"""How ``Serde`` tells a registry that is away from a record that is wrong (issue 7): only
the registry's own verdict (no such schema id) or a body that does not decode may
dead-letter; silence, a reset connection, a timeout or a 5xx are transient. Played against
small local HTTP servers that answer as a registry would, so each answer is exact."""

from __future__ import annotations

import io
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import frontforce.serialization as serialization
from frontforce.config import Settings, parse_settings
from frontforce.errors import InvalidRecordError, RetriableError
from frontforce.serialization import Serde
from schemas import SCHEMA_FILES, WORKER_SCHEMA_FILES, load_schema_str

Handler = Callable[[BaseHTTPRequestHandler], None]


class FakeRegistry:
    def __init__(self, answer: Handler) -> None:
        self.paths: list[str] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _any(self) -> None:
                outer.paths.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                answer(self)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/apis/ccompat/v7"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def reply(status: int, body: object) -> Handler:
    def answer(h: BaseHTTPRequestHandler) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return answer


def registry_serving(schema: str) -> Handler:
    def answer(h: BaseHTTPRequestHandler) -> None:
        if "/schemas/ids/7" in h.path:
            reply(200, {"schema": schema, "schemaType": "AVRO"})(h)
        elif h.command == "POST" and "/versions" in h.path:
            reply(200, {"id": 7})(h)
        else:
            reply(404, {"error_code": 40401, "message": "not found"})(h)
    return answer


def settings(url: str) -> Settings:
    return parse_settings(f"""
kafka: {{schema_registry_url: "{url}"}}
front: {{app_secret: "unused"}}
salesforce: {{login_url: "https://127.0.0.1:1", client_id: "unused", client_secret: "unused"}}
""")


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(serialization, "REGISTRY_TIMEOUT_S", 1)
    monkeypatch.setattr(serialization, "_CONFIRM_404_S", 0.1)
    yield


AUDIT = {"command_id": "c1", "correlation_id": "e1", "target": "salesforce", "operation": "UpsertTask",
         "outcome": "CREATED", "record_id": None, "api_calls": {}, "error": None, "source_topic": "t",
         "source_partition": 0, "source_offset": 1, "at": 1}
WIRE = b"\x00" + struct.pack(">I", 7)


def test_encode_and_decode_ask_only_for_the_topic_subject_never_for_associations(quick: None) -> None:
    """Guards the fresh-clone hang: confluent-kafka's default subject strategy first asks
    ``/associations/...``, a route Apicurio does not serve."""
    reg = FakeRegistry(registry_serving(load_schema_str("audit")))
    serde = Serde(settings(reg.url))
    data = serde.encode("audit", AUDIT)
    assert data[:5] == WIRE
    assert serde.decode("audit", data)["command_id"] == "c1"
    assert reg.paths and not [p for p in reg.paths if "associations" in p]
    assert any("/subjects/audit-value/versions" in p for p in reg.paths)


@pytest.mark.parametrize("answer", [
    reply(503, {"error_code": 50301, "message": "storage not ready"}),
    reply(500, {"error_code": 50001, "message": "boom"}),
])
def test_a_failing_registry_is_transient_for_decode_and_encode(quick: None, answer: Handler) -> None:
    serde = Serde(settings(FakeRegistry(answer).url))
    with pytest.raises(RetriableError):
        serde.decode("audit", WIRE + b"\x02x")
    with pytest.raises(RetriableError):
        serde.encode("audit", AUDIT)


def test_a_registry_that_never_answers_is_transient_and_bounded(quick: None) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/apis/ccompat/v7"
    serde = Serde(settings(url))
    started = time.monotonic()
    with pytest.raises(RetriableError):
        serde.decode("audit", WIRE + b"\x02x")
    assert time.monotonic() - started < 60
    silent.close()


def test_a_refused_connection_is_transient(quick: None) -> None:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    serde = Serde(settings(f"http://127.0.0.1:{port}/apis/ccompat/v7"))
    with pytest.raises(RetriableError):
        serde.decode("audit", WIRE + b"\x02x")


def test_only_a_confirmed_unknown_schema_id_or_a_bad_body_is_poison(quick: None) -> None:
    unknown = FakeRegistry(reply(404, {"error_code": 40403, "message": "Schema 7 not found"}))
    with pytest.raises(InvalidRecordError, match="no such schema"):
        Serde(settings(unknown.url)).decode("audit", WIRE + b"\x02x")
    assert len([p for p in unknown.paths if "/schemas/ids/7" in p]) >= 2  # asked twice
    serving = Serde(settings(FakeRegistry(registry_serving(load_schema_str("audit"))).url))
    with pytest.raises(InvalidRecordError, match="cannot decode"):
        serving.decode("audit", WIRE + b"\x02")  # truncated body
    with pytest.raises(InvalidRecordError, match="not Confluent wire format"):
        serving.decode("audit", b"\x01garbage")
    with pytest.raises(InvalidRecordError, match="cannot encode"):
        serving.encode("audit", {**AUDIT, "source_offset": "not a number"})


def test_the_fast_path_writes_and_reads_what_the_registry_client_does(quick: None) -> None:
    """After the first record of a topic (or writer schema id), records go through fastavro
    with schemas parsed once instead of confluent's (de)serializers: the bytes and values
    must be exactly theirs, a record that does not fit is still poison, and a record whose
    writer schema id is new goes through the registry client again."""
    reg = FakeRegistry(registry_serving(load_schema_str("audit")))
    serde = Serde(settings(reg.url))
    first = serde.encode("audit", AUDIT)
    assert "audit" in serde._fast_enc
    again = serde.encode("audit", AUDIT)
    assert again == first
    other = {**AUDIT, "command_id": "c2", "error": "why", "outcome": "MATCHED"}
    slow = Serde(settings(reg.url)).encode("audit", other)
    assert serde.encode("audit", other) == slow
    assert serde.decode("audit", first) == Serde(settings(reg.url)).decode("audit", first)
    assert ("audit", struct.unpack(">I", first[1:5])[0]) in serde._fast_dec
    assert serde.decode("audit", slow) == {**Serde(settings(reg.url)).decode("audit", slow)}
    assert serde.decode("audit", slow)["outcome"] == "MATCHED"
    with pytest.raises(InvalidRecordError, match="cannot encode"):
        serde.encode("audit", {**AUDIT, "source_offset": "not a number"})
    with pytest.raises(InvalidRecordError, match="cannot decode"):
        serde.decode("audit", first[:6])


def _datum(schema: object, rng: random.Random, names: dict[str, dict[str, object]], depth: int = 0,
           tuples: bool = False) -> object:
    """A random value of an Avro schema (parsed JSON, no logical types), edge cases included.
    ``tuples``: a union of several records takes its value in tuple notation (full name,
    value), as the stream worker writes a command's operation."""
    if isinstance(schema, list):
        branch = rng.choice(schema)
        named = [b for b in schema if isinstance(b, dict) and b.get("type") == "record"]
        value = _datum(branch, rng, names, depth, tuples)
        if tuples and len(named) > 1 and branch in named:
            full = [k for k, v in names.items() if v is branch and "." in k]  # _named_types'
            return (full[0] if full else str(branch["name"]), value)
        return value
    if isinstance(schema, str):
        if schema in names:
            return _datum(names[schema], rng, names, depth)
        schema = {"type": schema}
    assert isinstance(schema, dict)
    t = schema["type"]
    if isinstance(t, list | dict):
        return _datum(t, rng, names, depth)
    if t == "record":
        names[str(schema["name"])] = schema
        if "namespace" in schema:
            names[f"{schema['namespace']}.{schema['name']}"] = schema
        return {f["name"]: _datum(f["type"], rng, names, depth + 1, tuples)  # type: ignore[index]
                for f in schema["fields"]}  # type: ignore[union-attr]
    if t == "enum":
        names[str(schema["name"])] = schema
        return rng.choice(schema["symbols"])  # type: ignore[arg-type]
    n = 0 if depth > 4 else rng.choice([0, 1, 3])
    if t == "array":
        return [_datum(schema["items"], rng, names, depth + 1, tuples) for _ in range(n)]
    if t == "map":
        return {f"k{i}é": _datum(schema["values"], rng, names, depth + 1, tuples) for i in range(n)}
    text = rng.choice(["", "a", "Grüße 🎉 <b>x</b>", "x" * 300, "\x00\n\t"])
    return {"null": None, "boolean": rng.random() < 0.5, "string": text, "bytes": text.encode(),
            "int": rng.choice([0, -1, 2**31 - 1, -(2**31)]), "long": rng.choice([0, -1, 2**63 - 1, 1764000000000]),
            "double": rng.choice([0.0, -1.5, 1e300]), "float": 0.5}[str(t)]


def _named_types(schema: object) -> dict[str, dict[str, object]]:
    """Every named type of ``schema``, by name and by full name."""
    names: dict[str, dict[str, object]] = {}

    def collect(node: object, namespace: str = "") -> None:
        if isinstance(node, list):
            for x in node:
                collect(x, namespace)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "enum", "fixed"):
                ns = str(node.get("namespace", namespace))
                names[str(node["name"])] = names[f"{ns}.{node['name']}"] = node
                namespace = ns
            for v in node.values():
                collect(v, namespace)

    collect(schema)
    return names


@pytest.mark.parametrize("logical", sorted(set(SCHEMA_FILES) | set(WORKER_SCHEMA_FILES)))
def test_the_compiled_plain_decoder_reads_exactly_what_fastavro_reads(logical: str) -> None:
    """The stream worker's hot path decodes with cavro (issue 10); every other read is
    fastavro's. For 300 random records of each schema, edge values included, the two give
    the same values, and a truncated body is an error for both."""
    from fastavro import parse_schema, schemaless_reader, schemaless_writer

    schema = serialization._no_logical_types(json.loads(load_schema_str(logical)))
    parsed = parse_schema(schema)
    compiled = serialization.cavro.Schema(json.dumps(schema), options=serialization._CAVRO_PLAIN)
    rng = random.Random(f"cavro-{logical}")
    names = _named_types(schema)
    for _ in range(300):
        record = _datum(schema, rng, names)
        out = io.BytesIO()
        schemaless_writer(out, parsed, record)
        body = out.getvalue()
        expected = schemaless_reader(io.BytesIO(body), parsed, None)
        assert compiled.binary_decode(body) == expected
        if len(body) > 1:
            with pytest.raises(EOFError):
                compiled.binary_decode(body[: len(body) // 2 - 1] if len(body) > 3 else body[:1])


def test_the_plain_decode_goes_through_the_compiled_decoder_after_the_first_records(quick: None) -> None:
    reg = FakeRegistry(registry_serving(load_schema_str("audit")))
    serde = Serde(settings(reg.url))
    body = serde.encode("audit", AUDIT)
    first = serde.decode("audit", body, plain=True)  # asks the registry, compiles, decodes
    key = ("audit", struct.unpack(">I", body[1:5])[0])
    assert key in serde._compiled
    assert serde.decode("audit", body, plain=True) == first == {**AUDIT, "reason": None}
    with pytest.raises(InvalidRecordError, match="cannot decode"):
        serde.decode("audit", body[:8], plain=True)


@pytest.mark.parametrize("logical", sorted(serialization._CAVRO_ENCODE | serialization._CAVRO_ENCODE_TUPLES))
def test_the_compiled_encoder_writes_exactly_what_fastavro_writes(quick: None, logical: str) -> None:
    """The receiver encodes a Front event with cavro, every process its audit records, the
    stream worker its commands and its dedupe log. For 1,000 random records of the schema
    (edge values included; a command's operation in tuple notation, as the worker writes it)
    and for records fastavro takes and cavro may not (a float or a bool for a long, an int for
    a boolean or a double, a date for a timestamp, an operation as a plain dict),
    ``Serde.encode`` gives fastavro's bytes, and a record neither can write is still poison."""
    from fastavro import parse_schema, schemaless_writer

    schema_str = load_schema_str(logical)
    full = json.loads(schema_str)
    parsed = parse_schema(full)
    plain = serialization._no_logical_types(full)
    names = _named_types(plain)
    reg = FakeRegistry(registry_serving(schema_str))
    s = settings(reg.url)
    topic = {**s.worker_topics, **s.worker_table_topics}.get(logical, logical)
    serde = Serde(s)
    rng = random.Random(f"cavro-encode-{logical}")
    tuples = logical in serialization._CAVRO_ENCODE_TUPLES

    def fastavro_bytes(record: object) -> bytes:
        out = io.BytesIO()
        schemaless_writer(out, parsed, record)
        return WIRE + out.getvalue()

    first = _datum(plain, rng, names, tuples=tuples)
    assert serde.encode(topic, first) == fastavro_bytes(first)  # the registry's answer
    compiled = serde._fast_enc[topic][2]
    assert compiled is not None  # from now on, the compiled encoder
    for _ in range(1000):
        record = _datum(plain, rng, names, tuples=tuples)
        assert serde.encode(topic, record) == fastavro_bytes(record)
        compiled.binary_encode(record)  # which wrote it, not fastavro

    def base(t: object) -> object:
        return t.get("type") if isinstance(t, dict) else t

    longs = [f["name"] for f in plain["fields"] if base(f["type"]) == "long"]
    bools = [f["name"] for f in plain["fields"] if base(f["type"]) == "boolean"]
    odds = [(f, v) for f in longs[:1] for v in (1.0, True)] + [(b, 1) for b in bools[:1]]
    for field, value in odds:
        odd = {**first, field: value}
        with pytest.raises(Exception):  # noqa: B017 - cavro refuses it (any error)
            compiled.binary_encode(odd)
        assert serde.encode(topic, odd) == fastavro_bytes(odd)
    maps = [f["name"] for f in plain["fields"]
            if isinstance(f["type"], dict) and f["type"].get("type") == "map" and f["type"]["values"] == "double"]
    for field in maps:  # an int where a double is: fastavro writes the double, and so must we
        odd = {**first, field: {"salesforce.rest": 1, "x": 0}}
        assert serde.encode(topic, odd) == fastavro_bytes(odd)
    stamps = [f["name"] for f in full["fields"]
              if isinstance(f["type"], dict) and f["type"].get("logicalType") == "timestamp-millis"]
    for field in stamps:  # a datetime where a timestamp is: fastavro converts it
        odd = {**first, field: datetime(2026, 12, 5, 6, 0, 0, 123000, tzinfo=UTC)}
        assert serde.encode(topic, odd) == fastavro_bytes(odd)
    if tuples:
        # The union of records as a plain dict: each library might take another branch, so
        # fastavro decides (here: the branch whose fields fit best).
        union = serialization._record_unions(plain)
        assert union
        for _ in range(50):
            record = _datum(plain, rng, names, tuples=True)
            odd = {**record, union[0]: record[union[0]][1]}
            assert serde.encode(topic, odd) == fastavro_bytes(odd)
    if longs:
        with pytest.raises(InvalidRecordError, match="cannot encode"):
            serde.encode(topic, {**first, longs[0]: "not a number"})
    strings = [f["name"] for f in plain["fields"] if base(f["type"]) == "string"]
    odd = ({**first, strings[0]: "\ud800"} if strings else  # a lone surrogate: neither writes it
           {**first, plain["fields"][0]["name"]: "not an array"})
    with pytest.raises(InvalidRecordError, match="cannot encode"):
        serde.encode(topic, odd)


def _logical_datum(schema: object, rng: random.Random, names: dict[str, dict[str, object]],
                   depth: int = 0) -> object:
    """``_datum`` with values a timestamp or date field holds in practice (and its edges: the
    epoch, before it, year 9999), so that both decoders get to read them as Python values."""
    if isinstance(schema, list):
        return _logical_datum(rng.choice(schema), rng, names, depth)
    if isinstance(schema, str) and schema in names:
        return _logical_datum(names[schema], rng, names, depth)
    if isinstance(schema, dict):
        kind = schema.get("logicalType")
        if kind in ("timestamp-millis", "local-timestamp-millis"):
            return rng.choice([0, -1000, 1764000000123, 253402300799999])
        if kind == "timestamp-micros":
            return rng.choice([0, -1, 1764000000123456])
        if kind == "date":
            return rng.choice([0, -1, 20426, 2932896])
        t = schema["type"]
        if t == "record":
            names[str(schema["name"])] = schema
            if "namespace" in schema:
                names[f"{schema['namespace']}.{schema['name']}"] = schema
            return {f["name"]: _logical_datum(f["type"], rng, names, depth + 1)  # type: ignore[index]
                    for f in schema["fields"]}  # type: ignore[union-attr]
        if isinstance(t, list | dict):
            return _logical_datum(t, rng, names, depth)
        n = 0 if depth > 4 else rng.choice([0, 1, 3])
        if t == "array":
            return [_logical_datum(schema["items"], rng, names, depth + 1) for _ in range(n)]
        if t == "map":
            return {f"k{i}": _logical_datum(schema["values"], rng, names, depth + 1) for i in range(n)}
    return _datum(schema, rng, names, depth)


@pytest.mark.parametrize("logical", sorted(set(SCHEMA_FILES) | set(WORKER_SCHEMA_FILES)))
def test_the_compiled_full_decoder_reads_exactly_what_fastavro_reads(quick: None, logical: str) -> None:
    """Every decode that is not the worker's plain one (a sink's command, an audit record)
    goes through cavro with logical types, and for command topics unions of records as
    (name, value). For 300 random records of each schema, ``Serde.decode`` gives what
    fastavro reads with the same options (or refuses what fastavro refuses), and once the
    registry answered it is the compiled decoder that reads."""
    from fastavro import parse_schema, schemaless_reader, schemaless_writer

    schema_str = load_schema_str(logical)
    full = json.loads(schema_str)
    parsed = parse_schema(full)
    reg = FakeRegistry(registry_serving(schema_str))
    serde = Serde(settings(reg.url))
    topic = next((t for t, lg in serde._logical.items() if lg == logical), logical)
    named = logical in serialization.COMMAND_TOPICS
    rng = random.Random(f"cavro-full-{logical}")
    names = _named_types(full)
    read = 0
    for _ in range(300):
        record = _logical_datum(full, rng, names)
        out = io.BytesIO()
        schemaless_writer(out, parse_schema(serialization._no_logical_types(full)), record)
        body = WIRE + out.getvalue()
        try:
            expected: object = schemaless_reader(io.BytesIO(body[5:]), parsed, None, named)
        except Exception:  # noqa: BLE001 - a value no Python type holds: poison for both
            with pytest.raises(InvalidRecordError):
                serde.decode(topic, body)
            continue
        assert serde.decode(topic, body) == expected
        read += 1
    assert read > 150
    # The compiled decoder reads the commands (the sinks); the rest stay fastavro's.
    assert ((topic, struct.unpack(">I", WIRE[1:5])[0]) in serde._compiled_full) == named
    decoders = {n: serialization.cavro.Schema(json.dumps(full), options=serialization._CAVRO_COMMANDS
                                              if n else serialization._CAVRO_PLAIN)
                for n in (False, True)}
    rng = random.Random(f"cavro-full-direct-{logical}")
    for _ in range(300):  # the decoder itself, with and without record names
        record = _logical_datum(full, rng, names)
        out = io.BytesIO()
        schemaless_writer(out, parse_schema(serialization._no_logical_types(full)), record)
        for names_too in (False, True):
            try:
                expected = schemaless_reader(io.BytesIO(out.getvalue()), parsed, None, names_too)
            except Exception:  # noqa: BLE001, S112 - fastavro decides these, not cavro
                continue
            assert decoders[names_too].binary_decode(out.getvalue()) == expected
