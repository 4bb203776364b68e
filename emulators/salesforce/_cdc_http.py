"""Change-event subscription over HTTP long-polling: ``/__cdc/...``.

THIS IS NOT A SALESFORCE API. Salesforce delivers change events through the Pub/Sub API
(gRPC ``eventbus.v1.PubSub/Subscribe``, Avro payloads) or CometD; neither is emulated. This
endpoint exists so that frontforce's CDC source logic (replay positions, retention errors,
delivery allocation, merged events, nulls-mean-unchanged, echo filtering by commitUser, lead
conversion transactions) can be tested against the emulator. A source keeps its Pub/Sub-specific
transport thin and plugs this one in for tests. What is kept identical to Pub/Sub: the decoded
event payload (see ``_cdc``), replay semantics (LATEST/EARLIEST/CUSTOM, ``latest_replay_id``),
72 h retention, and the error a stale replay id produces (by its Pub/Sub error code).

GET /__cdc/events      (``Authorization: Bearer <access token>`` from /services/oauth2/token)
    channel     required; ``/data/ChangeEvents`` or ``/data/{Entity}ChangeEvent`` for Account,
                Contact, Lead, Opportunity, Case, User, Task. Repeat the parameter or separate
                with commas to subscribe to several channels at once.
    replay_id   -1 = LATEST (only events committed after this call; the default),
                -2 = EARLIEST retained, N >= 0 = events after the event with replay id N.
    limit       max events returned (default 100, 1..1000) — Pub/Sub's num_requested.
    wait        long-poll: seconds to wait for a first event when none is available
                (default 0, max 270 — Pub/Sub's keepalive interval).
    bitmap      ``true``: changedFields/nulledFields/diffFields as Pub/Sub bitmaps (``0x…``,
                ``pos-0x…``) over the schema from /__cdc/schemas/{schemaId}; default: names
                (as after Salesforce's ChangeEventHeaderUtility expansion).
    200 {"channels": [...],
         "events": [{"replayId": 42, "channel": "/data/ContactChangeEvent", "id": "<uuid>",
                     "schemaId": "...", "payload": {"ChangeEventHeader": {...}, ...fields}}],
         "latest_replay_id": 42,   # resume position: store it (even when events is empty)
         "earliest_replay_id": 3,  # what -2 resolves to right now
         "has_more": false,
         "delivery": {"used": 17, "max": 25000}}
    400 {"error": {"code": "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted",
                   "grpc_status": "INVALID_ARGUMENT", "message": ...}}
        replay id older than retention (or after a reset) or beyond the newest event.
    403 {"error": {"code": "sfdc.platform.eventbus.grpc.subscription.limit.exceeded", ...}}
        the client's delivered events in the rolling 24 h reached ``cdc_delivery_limit``
        (default 25,000; counted per OAuth client id, standing in for "per subscriber
        connection"). A call is cut short at the allocation, the next one is refused.
    400 {"error": {"code": "emulator.cdc.entity.selection.limit.exceeded", ...}}
        per-entity channels would select more than ``cdc_entity_limit`` (default 5) distinct
        entities. The selection is org-wide and sticky, like Setup's CDC selection: every
        entity named through a per-entity channel joins it; naming a 6th is refused. Clear it
        with ``POST /__admin/config {"cdc_selected_entities": []}``; 0 = unlimited (add-on).
        ``/data/ChangeEvents`` is not limited and carries every captured entity (an emulator
        simplification: Salesforce sends only selected entities on it).
    400 {"error": {"code": "emulator.cdc.topic.invalid" | "emulator.cdc.invalid.argument"}}
    401 [{"errorCode": "INVALID_SESSION_ID", ...}]  (as the REST API)
    Not charged to the REST API allocation.

GET /__cdc/schemas/{schemaId}   -> {"schema_id": ..., "schema_json": "<Avro schema JSON>"}
    (Pub/Sub GetSchema's SchemaInfo).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from emulators.salesforce._admin import json_response
from emulators.salesforce._auth import INVALID_SESSION, session_for
from emulators.salesforce._cdc import (
    ALL_CHANNEL,
    CDC_ENTITIES,
    ReplayError,
    avro_schema,
    channel_for,
    entity_for_channel,
    schema_id,
    to_bitmaps,
)
from emulators.salesforce._settings import Settings
from emulators.salesforce._store import OrgState

__all__ = ["cdc_routes"]

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MAX_WAIT = 270.0
_POLL_INTERVAL = 0.05
_WINDOW_MINUTES = 24 * 60
_REPLAY_CODE = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
_LIMIT_CODE = "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"
_SELECTION_CODE = "emulator.cdc.entity.selection.limit.exceeded"
_TOPIC_CODE = "emulator.cdc.topic.invalid"
_ARGUMENT_CODE = "emulator.cdc.invalid.argument"


class _CdcError(Exception):
    def __init__(self, status: int, code: str, grpc_status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"code": code, "grpc_status": grpc_status, "message": message}}


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _CdcError(400, _ARGUMENT_CODE, "INVALID_ARGUMENT",
                        f"{name} must be an integer") from None
    if not low <= value <= high:
        raise _CdcError(400, _ARGUMENT_CODE, "INVALID_ARGUMENT",
                        f"{name} must be between {low} and {high}")
    return value


def _wait_param(request: Request) -> float:
    raw = request.query_params.get("wait") or "0"
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT:
        raise _CdcError(400, _ARGUMENT_CODE, "INVALID_ARGUMENT",
                        f"wait must be a number of seconds between 0 and {MAX_WAIT:g}")
    return value


def _channels(request: Request) -> tuple[list[str], frozenset[str] | None, list[str]]:
    """(channels, entities to deliver (None = all), entities named by per-entity channels)."""
    raw = [part.strip() for value in request.query_params.getlist("channel")
           for part in value.split(",") if part.strip()]
    if not raw:
        raise _CdcError(400, _ARGUMENT_CODE, "INVALID_ARGUMENT", "channel is required")
    channels: list[str] = []
    named: list[str] = []
    everything = False
    for channel in raw:
        if channel == ALL_CHANNEL:
            everything = True
            channels.append(channel)
            continue
        entity = entity_for_channel(channel)
        if entity is None:
            raise _CdcError(400, _TOPIC_CODE, "NOT_FOUND",
                            f"Unknown or unsupported channel {channel}; supported: "
                            f"{ALL_CHANNEL} and /data/{{Entity}}ChangeEvent for "
                            f"{', '.join(CDC_ENTITIES)}")
        if entity not in named:
            named.append(entity)
            channels.append(channel_for(entity))
    return channels, None if everything else frozenset(named), named


def _select(state: OrgState, named: list[str]) -> None:
    """Enforce the entity selection ceiling for per-entity channels (sticky, org-wide)."""
    if not named:
        return
    ceiling = int(state.config["cdc_entity_limit"])
    selected = state.cdc.selected
    union = selected + [e for e in named if e not in selected]
    if ceiling > 0 and len(union) > ceiling:
        raise _CdcError(400, _SELECTION_CODE, "FAILED_PRECONDITION",
                        f"Change Data Capture entity selection limit ({ceiling}) exceeded: "
                        f"selected {selected}, requested {named}. Without the add-on an org "
                        f"can select at most {ceiling} entities.")
    state.cdc.selected = union


def _render(event: dict[str, Any], bitmap: bool) -> dict[str, Any]:
    entity = event["entity"]
    payload = event["payload"]
    if bitmap:
        header = dict(payload["ChangeEventHeader"])
        for key in ("changedFields", "nulledFields", "diffFields"):
            header[key] = to_bitmaps(entity, header[key])
        payload = {**payload, "ChangeEventHeader": header}
    return {"replayId": event["replayId"], "channel": channel_for(entity), "id": event["id"],
            "schemaId": schema_id(entity), "payload": payload}


def cdc_routes(state: OrgState, settings: Settings) -> list[BaseRoute]:
    def authenticate(request: Request) -> dict[str, Any] | None:
        with state.lock:
            session = session_for(state, request.headers.get("authorization"))
            if session is None:
                state.stats["unauthorized"] += 1
            return session

    async def events(request: Request) -> Response:
        session = authenticate(request)
        if session is None:
            return json_response(INVALID_SESSION, 401)
        client_id = str(session.get("client_id") or settings.client_id)
        try:
            channels, entities, named = _channels(request)
            replay_id = _int_param(request, "replay_id", -1, -2, 2**62)
            limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            wait = _wait_param(request)
            bitmap = request.query_params.get("bitmap", "false").lower() == "true"
            with state.lock:
                _select(state, named)
                state.cdc_purge()
                try:
                    position = state.cdc.position(replay_id)
                except ReplayError:
                    raise _CdcError(
                        400, _REPLAY_CODE, "INVALID_ARGUMENT",
                        f"The Replay ID validation failed: {replay_id} is not within the "
                        f"retained event stream ({state.cdc.earliest_replay_id}.."
                        f"{state.cdc.last_replay_id}); events are kept "
                        f"{state.config['cdc_retention_hours']} h. Resubscribe with "
                        "EARLIEST or LATEST and resync.") from None
        except _CdcError as err:
            return json_response(err.body, err.status)

        deadline = time.monotonic() + wait
        while True:
            with state.lock:
                maximum = int(state.config["cdc_delivery_limit"])
                minute = int(state.epoch() // 60)
                used = state.cdc.delivered_since(client_id, minute - _WINDOW_MINUTES)
                if used >= maximum:
                    refusal = _CdcError(403, _LIMIT_CODE, "RESOURCE_EXHAUSTED",
                                        "You have exceeded the event delivery limit for your "
                                        f"org ({used}/{maximum} delivered events in 24 h for "
                                        f"client {client_id}).")
                    return json_response(refusal.body, refusal.status)
                found, latest, has_more = state.cdc.read(entities, position,
                                                         min(limit, maximum - used))
                if found or time.monotonic() >= deadline:
                    state.cdc.count_delivery(client_id, minute, len(found))
                    body = {"channels": channels,
                            "events": [_render(e, bitmap) for e in found],
                            "latest_replay_id": latest,
                            "earliest_replay_id": state.cdc.earliest_replay_id,
                            "has_more": has_more,
                            "delivery": {"used": used + len(found), "max": maximum}}
                    return json_response(body)
            if await request.is_disconnected():
                return Response(status_code=499)
            await asyncio.sleep(_POLL_INTERVAL)

    async def schema(request: Request) -> Response:
        if authenticate(request) is None:
            return json_response(INVALID_SESSION, 401)
        wanted = request.path_params["schema_id"]
        for entity in CDC_ENTITIES:
            if schema_id(entity) == wanted:
                return json_response({"schema_id": wanted,
                                      "schema_json": json.dumps(avro_schema(entity))})
        return json_response({"error": {"code": _ARGUMENT_CODE, "grpc_status": "NOT_FOUND",
                                        "message": f"unknown schema id {wanted}"}}, 404)

    return [
        Route("/__cdc/events", events, methods=["GET"]),
        Route("/__cdc/schemas/{schema_id}", schema, methods=["GET"]),
    ]
