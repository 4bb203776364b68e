"""Faithful local emulator of the Salesforce REST API (contract: reference/salesforce-api.md).

Public API
    create_app(state=None, **settings) -> Starlette
        settings: Settings fields (client_id, client_secret, jwt_consumer_key, jwt_public_key,
        jwt_audiences, instance_url, persist_path, admin_loopback_only) and org overrides
        daily_limit, page_size, session_timeout, duplicate_rules, cdc_retention_hours,
        cdc_delivery_limit, cdc_entity_limit.
    OrgState            in-memory org; OrgState.load(path) / state.save(path) (JSON)
    Settings, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
    checksum, to18, canonical_id    record-id helpers (15/18-char, case-safe suffix)

Program
    python -m emulators.salesforce --host 127.0.0.1 --port 8443 --state-dir DIR [--persist]
        [--daily-limit N] [--page-size N] [--session-timeout S] [--client-id X]
        [--client-secret Y] [--jwt-consumer-key K] [--jwt-public-key PEM] [--instance-url U]
        [--no-duplicate-rules] [--cdc-retention-hours H] [--cdc-delivery-limit N]
        [--cdc-entity-limit N] [--pubsub-port N] [--pubsub-keepalive S]
    prints ``salesforce emulator ready on https://127.0.0.1:PORT (ca: DIR/ca.pem)``, then
    ``salesforce pubsub api ready on 127.0.0.1:PORT``.

Auth
    POST /services/oauth2/token: client_credentials (Basic or body) and JWT bearer. JWT
    assertions are verified against ``jwt_public_key`` when configured; otherwise any
    well-formed, unexpired RS256 JWT with ``iss`` == consumer key and a known active ``sub``
    is accepted WITHOUT checking the signature (test mode).

REST (/services/data/vXX.X/) beyond sObjects/query/composite/limits
    POST actions/standard/convertLead | actions/custom/apex/ConvertLead   lead conversion in
        the invocable-action envelope (see ``_convert``).
    Standard Lead/Contact duplicate rules on Email: DUPLICATES_DETECTED with ``duplicateResut``
        details; ``Sforce-Duplicate-Rule-Header: allowSave=true`` bypasses (``_duplicates``).
    ``Sforce-Call-Options: client=ID`` is echoed in change events' changeOrigin.

Change Data Capture: the Pub/Sub API (gRPC ``eventbus.v1.PubSub``, see ``_pubsub``)
    PubSubServer(state, tls, host, port, keepalive_s=270).start()   TLS with the project CA,
        its own port; ``python -m emulators.salesforce --pubsub-port N`` (default 7443) starts
        it with the REST API and prints ``salesforce pubsub api ready on HOST:PORT``.
    Subscribe (flow control by num_requested; LATEST / EARLIEST / CUSTOM replay; empty
        keepalive responses with latest_replay_id), GetTopic, GetSchema (Avro schema JSON per
        entity); payloads Avro binary with bitmap changedFields/nulledFields/diffFields;
        auth by call metadata accesstoken / instanceurl / tenantid; Salesforce's status codes
        and ``error-code`` trailers for bad tokens, invalid or expired replay ids, the delivery
        allocation.

Admin API (loopback only, no bearer token, never charged, never subject to fault rules)
    POST /__admin/reset                 clear data/usage/stats/change events/fault rules
                                        (keeps org, user, sessions, id and replay counters)
    POST /__admin/seed                  {"records": {"Type": [{...}]}} -> {"ids": {...}};
                                        "@Type[i]" refers to an id seeded earlier in the call;
                                        one transaction, change events with empty changeOrigin
    GET  /__admin/records/{Type}        every row, deleted ones included
    POST /__admin/undelete              {"ids": [...]} restore from the recycle bin (UNDELETE)
    GET  /__admin/stats                 API calls per endpoint kind, refusals, 401s, logins,
                                        injected faults
    GET  /__admin/requests?since=T      public requests seen since T (epoch s), logins and
                                        /limits included: counts per "METHOD path" (ids as
                                        {id}) and per status
    GET|POST /__admin/config            daily_limit, page_size, session_timeout,
                                        clock_offset (s), api_usage (sets used calls),
                                        duplicate_rules, enforce_unique (false: custom
                                        Unique fields accept repeats; describe unchanged),
                                        cdc_retention_hours,
                                        cdc_delivery_limit, cdc_entity_limit,
                                        cdc_selected_entities (e.g. [] to clear)
    GET|POST|DELETE /__admin/faults     fault rules (latency before or after serving, outage,
                                        unable_to_lock_row, expired_session, request_limit;
                                        a client gone while held is never served; see
                                        ``_faults``)
    DELETE /__admin/faults/{id}         remove one rule
    GET  /__admin/cdc                   retained events, replay ids, selection, deliveries;
                                        ``?events=true`` lists the retained events (replayId,
                                        entity, changeType, recordIds, commitTimestamp)
    POST /__admin/cdc/gap               {"entity", "change_type": "GAP_*", "record_ids"}
    POST /__admin/sessions/expire       drop all sessions, or {"access_token": ...}
    POST /__admin/save                  write the state file now (with --persist)
"""

from emulators.salesforce._app import create_app
from emulators.salesforce._ids import canonical_id, checksum, to18
from emulators.salesforce._pubsub import PubSubServer
from emulators.salesforce._settings import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Settings
from emulators.salesforce._store import OrgState

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "OrgState",
    "PubSubServer",
    "Settings",
    "canonical_id",
    "checksum",
    "create_app",
    "to18",
]
