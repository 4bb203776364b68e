"""Faithful local emulator of Front's Core API (contract: reference/front-api.md, spec
specs/front-core-api.json), plus Front's webhook side (application and rule webhooks).

Public API
    create_app(state=None, *, token=None, rpm=None, persist_path=None, base_url=None,
               admin_loopback_only=True) -> Starlette
    FrontState          one company; FrontState.load(path) / state.save(path) (JSON)
    DEFAULT_TOKEN       "front-emulator-token" (accepted unless the state says otherwise)
    ROUTES              the served public routes, each naming its spec operationId
    WebhookEmitter, sign_app, sign_rule, inbound_email_event   (signed webhook delivery)

Program
    python -m emulators.front --host 127.0.0.1 --port N --state-dir DIR [--persist]
        [--token T] [--rpm 100] [--company NAME] [--base-url URL] [--tls] [--seed-defaults]
    (default port 8095; 0 picks a free one) prints ``front emulator ready on http://HOST:PORT``
    once listening (with --tls: ``https://… (ca: DIR/ca.pem)``). --persist loads/saves
    DIR/front-state.json (saved on SIGTERM/SIGINT).

Public routes (Bearer token; ``x-ratelimit-*`` on every response; ``_error`` bodies)
    GET /me; GET /teammates, /teammates/{id|alt:email:…}; GET /inboxes, /inboxes/{id}
    GET|POST /tags, /company/tags; GET /tags/{id}; GET|POST /links; GET /links/{id}
    GET /events (≤15, q[types|after|before|inboxes]), /events/{id}
    GET /conversations, /conversations/{id}; PATCH /conversations/{id}
    PUT …/assignee; POST|DELETE …/tags; GET|POST …/comments; POST|DELETE …/links;
    GET …/messages; GET …/events  (merged ids answer 301 to the survivor)
    GET|POST /contacts; GET|PATCH|DELETE /contacts/{id|alt:<source>:<handle>};
    POST|DELETE /contacts/{id}/handles; POST /contacts/merge; GET /contacts/{id}/conversations
    GET /contacts/custom_fields, /conversations/custom_fields, /links/custom_fields
    GET /messages/{id|alt:uid:…}, /comments/{id}

Admin API (loopback only, no token, not rate limited)
    POST /__admin/reset                    clean company (keeps identity, tokens, config)
    POST /__admin/seed                     {"teammates","inboxes","tags","links","contacts",
                                            "custom_fields": {resource: [...]}, "defaults"}
    GET  /__admin/state[?events=1]         everything, raw
    GET|POST /__admin/config               rpm, oauth_rpm, window_seconds, burst_enabled,
                                           burst_rps, links_per_minute, omit_retry_after,
                                           clamp_limit, reject_fractional_q_time,
                                           auto_create_contacts, clock_offset
    GET|POST /__admin/tokens               {"token", "kind": "api"|"oauth_client"}
    GET|POST /__admin/webhooks             subscribe {"url","kind":"app"|"rule","secret",
                                           "types"?,"preview"?,"retries"?,"duplicate_rate"?,
                                           "timeout_s"?,"backoff_s"?,"handshake"?}
    DELETE /__admin/webhooks/{id}; POST /__admin/webhooks/drain {"timeout"}
    POST /__admin/simulate/{inbound|outbound|comment|tag|untag|assign|unassign|archive|
                            reopen|trash|restore|link|unlink|move|merge}
    POST /__admin/merge                    {"into": cnv, "conversation_ids": [...]}
    GET|POST|DELETE /__admin/faults        {"method","path","status","count",
                                            "after_commit","delay_s"}
    POST /__admin/save                     write the state file now (with --persist)
"""

from emulators.front._app import create_app
from emulators.front._events import inbound_email_event
from emulators.front._router import ROUTES
from emulators.front._store import DEFAULT_TOKEN, FrontState
from emulators.front._webhooks import WebhookEmitter, sign_app, sign_rule

__all__ = [
    "DEFAULT_TOKEN",
    "ROUTES",
    "FrontState",
    "WebhookEmitter",
    "create_app",
    "inbound_email_event",
    "sign_app",
    "sign_rule",
]
