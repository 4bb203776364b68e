"""A thin Pub/Sub API client (gRPC ``eventbus.v1``, stubs generated from Salesforce's proto):
authentication metadata, schemas cached by id, Subscribe with explicit flow control, and
Salesforce's errors sorted by what to do about them.

- Authentication: ``accesstoken`` / ``instanceurl`` / ``tenantid`` from the same OAuth login
  as the REST client (``frontforce.salesforce.connect``); a fresh login on UNAUTHENTICATED.
- TLS: the configured CA bundle (``salesforce.ca_bundle``) when set, passed explicitly so no
  environment variable (``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``) overrides it.
- Errors: ``error-code`` trailer first, the status second (a proxy may drop trailers).
"""

from __future__ import annotations

import io
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fastavro
import grpc

from eventbus import pubsub_api_pb2 as pb
from eventbus import pubsub_api_pb2_grpc as pb_grpc
from frontforce.config import Settings
from frontforce.errors import BackPressure, FatalError, FrontforceError, RetriableError
from frontforce.salesforce import SalesforceConnection, connect
from sources.salesforce._bitmap import expand, named_records

__all__ = ["AuthExpired", "Event", "PubSubClient", "ReplayExpired", "Subscription", "classify"]

_PREFIX = "sfdc.platform.eventbus.grpc."
_REPLAY_CODES = (_PREFIX + "subscription.fetch.replayid.corrupted",
                 _PREFIX + "subscription.fetch.replayid.validation.failed")
_LIMIT_CODE = _PREFIX + "subscription.limit.exceeded"
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
                        grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED,
                        grpc.StatusCode.RESOURCE_EXHAUSTED})
_RPC_TIMEOUT_S = 30.0
# HTTP/2 pings find a dead connection under a Subscribe that waits for events; five
# minutes is gRPC servers' default minimum ping interval (faster pings get GOAWAY).
_CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 300_000), ("grpc.keepalive_timeout_ms", 20_000)]


class AuthExpired(RetriableError):
    """The session is no longer accepted: log in again, then retry."""


class ReplayExpired(FrontforceError):
    """The stored replay id is not accepted (older than retention, or the org's event
    stream was reset): resubscribe from LATEST and re-read by SOQL what may be missing."""


def classify(exc: grpc.RpcError, what: str) -> Exception:
    """A failed Pub/Sub call as one of our errors (STYLE habit 4)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    trailers = dict(exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else {}
    error_code = str(trailers.get("error-code") or "")
    message = f"{what}: {code.name} {error_code or '-'}: {details}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthExpired(message)
    if error_code in _REPLAY_CODES or (code == grpc.StatusCode.INVALID_ARGUMENT
                                       and "replay id" in (details or "").lower()):
        return ReplayExpired(message)
    if error_code == _LIMIT_CODE or "event delivery limit" in (details or ""):
        return BackPressure(message, 0.0)
    if code in _TRANSIENT:
        return RetriableError(message)
    return FatalError(message)


@dataclass(frozen=True)
class Schema:
    schema_id: str
    raw: dict[str, Any]
    parsed: Any
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """A decoded change event: header (bitmap lists expanded), body fields, replay id."""

    header: dict[str, Any]
    body: dict[str, Any]
    replay_id: bytes


class Subscription:
    """One Subscribe call. The first FetchRequest goes out at once; ``request(n)`` gives the
    server credit for ``n`` more events once the caller has dealt with what it has."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...], first: Any) -> None:
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(first)
        self._call = stub.Subscribe(iter(self._requests.get, None), metadata=metadata)

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            raise classify(exc, "subscribe") from exc

    def request(self, n: int) -> None:
        if n > 0:
            self._requests.put(pb.FetchRequest(num_requested=n))

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


class PubSubClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        ca = settings.salesforce.ca_bundle
        credentials = grpc.ssl_channel_credentials(ca.read_bytes() if ca else None)
        self._channel = grpc.secure_channel(settings.salesforce_source.pubsub_url, credentials,
                                            options=_CHANNEL_OPTIONS)
        self._stub = pb_grpc.PubSubStub(self._channel)
        self._conn: SalesforceConnection | None = None
        self._login = threading.Lock()  # topics run on threads; one login for all of them
        self._schemas: dict[str, Schema] = {}

    # ------------------------------------------------------------------ auth
    @property
    def conn(self) -> SalesforceConnection:
        """The REST connection whose session also authenticates Pub/Sub calls."""
        with self._login:
            if self._conn is None:
                self._conn = connect(self.settings.salesforce)
            return self._conn

    def reauthenticate(self, stale: SalesforceConnection | None) -> None:
        """Log in again, unless another thread already replaced the ``stale`` session."""
        with self._login:
            if self._conn is stale or self._conn is None:
                self._conn = connect(self.settings.salesforce)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        conn = self.conn
        return (("accesstoken", str(conn.client.session_id)),
                ("instanceurl", f"https://{conn.client.sf_instance}"),
                ("tenantid", conn.org_id))

    # ------------------------------------------------------------------ RPCs
    def schema(self, schema_id: str) -> Schema:
        cached = self._schemas.get(schema_id)
        if cached is None:
            try:
                info = self._stub.GetSchema(pb.SchemaRequest(schema_id=schema_id),
                                            metadata=self.metadata(), timeout=_RPC_TIMEOUT_S)
            except grpc.RpcError as exc:
                raise classify(exc, f"GetSchema {schema_id}") from exc
            raw = json.loads(info.schema_json)
            cached = Schema(schema_id, raw, fastavro.parse_schema(raw), named_records(raw))
            self._schemas[schema_id] = cached
        return cached

    def subscribe(self, topic: str, batch: int, replay_id: bytes | None = None) -> Subscription:
        """Subscribe after ``replay_id`` (CUSTOM), or from LATEST when there is none."""
        if replay_id is None:
            first = pb.FetchRequest(topic_name=topic, replay_preset=pb.LATEST, num_requested=batch)
        else:
            first = pb.FetchRequest(topic_name=topic, replay_preset=pb.CUSTOM, replay_id=replay_id,
                                    num_requested=batch)
        return Subscription(self._stub, self.metadata(), first)

    def decode(self, consumer_event: Any) -> Event:
        schema = self.schema(consumer_event.event.schema_id)
        payload = fastavro.schemaless_reader(io.BytesIO(consumer_event.event.payload),
                                             schema.parsed, None)
        if not isinstance(payload, dict) or "ChangeEventHeader" not in payload:
            raise FatalError(f"event {consumer_event.event.id} is not a change event "
                             f"(schema {schema.schema_id})")
        header = dict(payload.pop("ChangeEventHeader"))
        for key in ("changedFields", "nulledFields", "diffFields"):
            header[key] = expand(schema.raw, list(header.get(key) or []), schema.records)
        return Event(header, payload, bytes(consumer_event.replay_id))

    def close(self) -> None:
        self._channel.close()
