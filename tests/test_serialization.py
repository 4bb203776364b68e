"""How ``Serde`` tells a registry that is away from a record that is wrong (issue 7): only
the registry's own verdict (no such schema id) or a body that does not decode may
dead-letter; silence, a reset connection, a timeout or a 5xx are transient. Played against
small local HTTP servers that answer as a registry would, so each answer is exact."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import frontforce.serialization as serialization
from frontforce.config import Settings, parse_settings
from frontforce.errors import InvalidRecordError, RetriableError
from frontforce.serialization import Serde
from schemas import load_schema_str

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
