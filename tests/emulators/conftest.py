"""Fixtures for the emulator tests: a TLS Salesforce emulator in a background thread, and
clients built exactly as the product builds them (token POST, then unmodified
simple-salesforce with ``session_id=`` and a CA-pinned session)."""

from __future__ import annotations

import io
import json
import queue
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import grpc
import httpx
import pytest
import requests
from simple_salesforce import Salesforce

from emulators._server import ServerThread
from emulators.salesforce import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    OrgState,
    PubSubServer,
    create_app,
)
from emulators.tls import TlsFiles, ensure_ca
from eventbus import pubsub_api_pb2 as pb
from eventbus import pubsub_api_pb2_grpc as pb_grpc

# Seconds without events before the fixture's Pub/Sub server sends an empty keepalive
# response: how long a test's poll waits to know it has seen everything.
KEEPALIVE_S = 0.1

_open_sessions: list[requests.Session] = []
_open_clients: list[httpx.Client] = []
_open_channels: list[grpc.Channel] = []


def pinned_session(ca: Path) -> requests.Session:
    session = requests.Session()
    _open_sessions.append(session)
    # REQUESTS_CA_BUNDLE is set on these machines and would override session.verify
    # (fact sheet §0.13); ignore the environment and pin the emulator's CA.
    session.trust_env = False
    session.verify = str(ca)
    return session


def close_sessions() -> None:
    """Close every client session opened by these fixtures (frees server connections)."""
    while _open_sessions:
        _open_sessions.pop().close()
    while _open_clients:
        _open_clients.pop().close()
    while _open_channels:
        _open_channels.pop().close()


def expand_bitmap(schema: dict[str, Any], bitmaps: list[str]) -> list[str]:
    """Bitmap strings -> field names, as Salesforce's ChangeEventHeaderUtility.py does: the
    ``0x…`` element over top-level schema positions (bit i = 2**i), ``{pos}-0x…`` over the
    children of the compound field at ``pos``, reported as ``Parent.Child``."""
    fields = schema["fields"]
    names: list[str] = []
    for item in bitmaps:
        position, _, bits = item.rpartition("-")
        if not position:
            value = int(bits, 16)
            names += [f["name"] for i, f in enumerate(fields) if value >> i & 1]
            continue
        parent = fields[int(position)]
        child = next(t for t in parent["type"] if isinstance(t, dict))
        value = int(bits, 16)
        names += [f"{parent['name']}.{c['name']}" for i, c in enumerate(child["fields"])
                  if value >> i & 1]
    return names


LATEST, EARLIEST = -1, -2


class PubSubSubscriber:
    """Reads the emulator's change events over the Pub/Sub API (gRPC, TLS pinned to the
    project CA) with the stubs generated from Salesforce's proto, authenticated with its own
    access token. Payloads are decoded with the schema from GetSchema (fastavro) and the
    bitmap fields expanded to names; the raw bitmaps stay under ``bitmaps``.

    ``replay_id``: -1 = LATEST, -2 = EARLIEST, N = CUSTOM (after the event with replay id N).
    A ``poll`` is one Subscribe call that reads until the server's first empty keepalive
    response (the fixture's emulator sends one after 0.1 s without events)."""

    def __init__(self, target: str, ca: Path, token: dict[str, Any]) -> None:
        self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.read_bytes()))
        _open_channels.append(self.channel)
        self.stub = pb_grpc.PubSubStub(self.channel)
        org_id = str(token["id"]).rstrip("/").split("/")[-2]
        self.metadata = (("accesstoken", token["access_token"]),
                         ("instanceurl", token["instance_url"]), ("tenantid", org_id))
        self.schemas: dict[str, dict[str, Any]] = {}

    def schema(self, schema_id: str) -> dict[str, Any]:
        if schema_id not in self.schemas:
            info = self.stub.GetSchema(pb.SchemaRequest(schema_id=schema_id),
                                       metadata=self.metadata, timeout=10)
            self.schemas[schema_id] = json.loads(info.schema_json)
        return self.schemas[schema_id]

    def decode(self, consumer_event: Any) -> dict[str, Any]:
        event = consumer_event.event
        schema = self.schema(event.schema_id)
        payload = fastavro.schemaless_reader(io.BytesIO(event.payload),
                                             fastavro.parse_schema(schema), None)
        assert isinstance(payload, dict)
        header = payload["ChangeEventHeader"]
        bitmaps = {k: list(header[k]) for k in ("changedFields", "nulledFields", "diffFields")}
        for key, raw in bitmaps.items():
            header[key] = expand_bitmap(schema, raw)
        return {"replayId": int.from_bytes(consumer_event.replay_id, "big"), "id": event.id,
                "schemaId": event.schema_id,
                "channel": f"/data/{header['entityName']}ChangeEvent",
                "payload": payload, "bitmaps": bitmaps}

    @staticmethod
    def request(channel: str, replay_id: int, limit: int) -> Any:
        if replay_id >= 0:
            return pb.FetchRequest(topic_name=channel, replay_preset=pb.CUSTOM,
                                   replay_id=replay_id.to_bytes(8, "big"), num_requested=limit)
        preset = pb.EARLIEST if replay_id == EARLIEST else pb.LATEST
        return pb.FetchRequest(topic_name=channel, replay_preset=preset, num_requested=limit)

    def open(self, channel: str = "/data/ChangeEvents", replay_id: int = EARLIEST,
             limit: int = 100, timeout: float = 30.0) -> SubscribeStream:
        return SubscribeStream(self, self.request(channel, replay_id, limit), timeout)

    def poll(self, channel: str = "/data/ChangeEvents", replay_id: int = EARLIEST,
             limit: int = 100) -> dict[str, Any]:
        with self.open(channel, replay_id, limit) as stream:
            events: list[dict[str, Any]] = []
            while True:
                response = stream.next()
                events += [self.decode(e) for e in response.events]
                if not response.events:
                    return {"events": events,
                            "latest_replay_id": int.from_bytes(response.latest_replay_id, "big"),
                            "pending_num_requested": response.pending_num_requested}

    def events(self, channel: str = "/data/ChangeEvents", replay_id: int = EARLIEST,
               limit: int = 100) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.poll(channel, replay_id, limit)["events"]
        return events

    def tip(self, channel: str = "/data/ChangeEvents") -> int:
        """The current LATEST position: store it, then read only what happens next."""
        latest: int = self.poll(channel, LATEST)["latest_replay_id"]
        return latest

    def error(self, channel: str = "/data/ChangeEvents", replay_id: int = EARLIEST,
              limit: int = 100) -> grpc.RpcError:
        """The error a Subscribe ends with (fails the test if it delivers instead)."""
        with self.open(channel, replay_id, limit) as stream:
            try:
                response = stream.next()
            except grpc.RpcError as exc:
                return exc
        raise AssertionError(f"expected an error, got {response}")


class SubscribeStream:
    """One Subscribe call: the first FetchRequest at once, ``more(n)`` adds credit."""

    def __init__(self, subscriber: PubSubSubscriber, first: Any, timeout: float) -> None:
        self.requests: queue.Queue[Any] = queue.Queue()
        self.requests.put(first)
        self.call = subscriber.stub.Subscribe(iter(self.requests.get, None),
                                              metadata=subscriber.metadata, timeout=timeout)

    def next(self) -> Any:
        return next(self.call)

    def more(self, n: int, topic: str = "") -> None:
        self.requests.put(pb.FetchRequest(topic_name=topic, num_requested=n))

    def __enter__(self) -> SubscribeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.requests.put(None)
        self.call.cancel()


@dataclass
class Emulator:
    base_url: str
    ca: Path
    state: OrgState
    session: requests.Session
    pubsub_target: str
    _tokens: list[str] = field(default_factory=list)

    def token(self) -> dict[str, Any]:
        resp = self.session.post(f"{self.base_url}/services/oauth2/token",
                                 data={"grant_type": "client_credentials"},
                                 auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET))
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def client(self, version: str = "59.0", token: dict[str, Any] | None = None) -> Salesforce:
        tok = token or self.token()
        return Salesforce(session_id=tok["access_token"], instance_url=tok["instance_url"],
                          session=pinned_session(self.ca), version=version)

    def admin(self, method: str, path: str, json: Any = None) -> Any:
        resp = self.session.request(method, f"{self.base_url}/__admin/{path}", json=json)
        assert resp.status_code < 300, resp.text
        return resp.json()

    def seed(self, records: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
        ids: dict[str, list[str]] = self.admin("POST", "seed", {"records": records})["ids"]
        return ids

    def rows(self, type_name: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.admin("GET", f"records/{type_name}")["records"]
        return rows

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.admin("GET", "stats")
        return stats

    def subscriber(self, token: dict[str, Any] | None = None) -> PubSubSubscriber:
        return PubSubSubscriber(self.pubsub_target, self.ca, token or self.token())


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return ensure_ca(tmp_path_factory.mktemp("emulator-tls"))


@pytest.fixture
def make_emulator(tls_files: TlsFiles) -> Iterator[Callable[..., Emulator]]:
    servers: list[ServerThread] = []
    pubsubs: list[PubSubServer] = []

    def start(state: OrgState | None = None, **settings: Any) -> Emulator:
        org = state or OrgState()
        server = ServerThread(create_app(org, **settings), "127.0.0.1", 0, tls_files).start()
        servers.append(server)
        pubsub = PubSubServer(org, tls_files, "127.0.0.1", 0, keepalive_s=KEEPALIVE_S).start()
        pubsubs.append(pubsub)
        return Emulator(server.base_url, tls_files.ca_cert, org, pinned_session(tls_files.ca_cert),
                        pubsub.target)

    yield start
    # Close client connections first: idle TLS keep-alives would otherwise hold the
    # server's graceful shutdown for its full grace period.
    close_sessions()
    for server in servers:
        server.stop()
    for pubsub in pubsubs:
        pubsub.stop(grace=0)


@pytest.fixture
def emulator(make_emulator: Callable[..., Emulator]) -> Emulator:
    return make_emulator()


@pytest.fixture
def sf(emulator: Emulator) -> Salesforce:
    return emulator.client()


class EmulatorProcesses:
    """Start emulator CLIs as real subprocesses (``python -m emulators.<name>``) on a free
    port, read their ready line, and kill whatever is still running at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, module: str, state_dir: Path, ready: re.Pattern[str],
              *extra: str) -> tuple[subprocess.Popen[str], re.Match[str]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0",
             "--state-dir", str(state_dir), *extra],
            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        match = ready.match(line)
        assert match, f"unexpected first line {line!r}"
        assert int(match.group(2)) > 0
        return proc, match

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def emulator_processes() -> Iterator[EmulatorProcesses]:
    procs = EmulatorProcesses()
    yield procs
    procs.close()
