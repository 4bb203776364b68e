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
    GET|POST /accounts; GET|PATCH|DELETE /accounts/{id|alt:domain:…|alt:ext_id:…};
    GET|POST|DELETE /accounts/{id}/contacts (contact_ids: ids or contact aliases)
    GET /contacts/custom_fields, /accounts/custom_fields, /conversations/custom_fields,
        /links/custom_fields
    GET /messages/{id|alt:uid:…}, /comments/{id}

Admin API (loopback only, no token, not rate limited)
    POST /__admin/reset                    clean company (keeps identity, tokens, config)
    POST /__admin/seed                     a world, all or nothing (see "Seeding" below)
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
    POST /__admin/webhooks/replay          {"webhooks": [recorded body | "evt_…", ...],
                                            "subscription"?}  (see "Replaying" below)
    POST /__admin/simulate/{inbound|outbound|comment|tag|untag|assign|unassign|archive|
                            reopen|trash|restore|link|unlink|move|merge}
    POST /__admin/merge                    {"into": cnv, "conversation_ids": [...]}
    GET|POST|DELETE /__admin/faults        {"method","path","status","count",
                                            "after_commit","delay_s"}
    GET|DELETE /__admin/requests           public-API requests answered so far
                                           [{method, path, status, at}] (DELETE clears)
    POST /__admin/save                     write the state file now (with --persist)

Seeding (``POST /__admin/seed``, emulators/front/_world.py)
    Keys, all optional, applied in this order: "company" {id, name}; "custom_fields"
    {resource: [{id?, name, type, description?, values?}]} (resource: contact, account,
    conversation, link, …: what POST/PATCH of that resource accept); "teammates"; "inboxes"; "tags";
    "links"; "contacts"; "conversations" (each with nested "messages", "comments", "events");
    "events" (top level, each naming its "conversation_id"); "defaults": true adds two
    teammates, an inbox and two tags. Answers {"ids": {collection: [ids made or kept]}}.

    Ids: any record may give its "id" (a world recorded from a real Front account); it is
    kept verbatim if its prefix fits the kind (tea_ inb_ tag_ top_ crd_ grp_ fld_ cnv_ msg_
    com_ evt_; cmp_ for the company) and no record has it yet, else 400 naming the item:
    {"error": "conversations[3].id: expected a cnv_… id (conversation), got 'msg_x'"}.
    Ids left out are generated, and generated ids never equal a given one (also after a
    reset or a restart with --persist). A refused seed changes nothing.

    Records: the emulator's compact form or Front's wire shapes as recorded. References
    (assignee_id | assignee, tag_ids | tags, link_ids | links, author_id | author, a
    recipient's contact_id | _links.related.contact, inbox_ids) name records of the world,
    seeded now or before; a teammate may also be named by email. Wire-only keys (_links,
    blurb, attachments, metadata, ticket_ids, license_type, …) are ignored, other unknown
    keys refused. Conversation "status": open|assigned|unassigned|archived|deleted|spam;
    conversation custom_fields are checked against the definitions. Messages: type (email),
    is_inbound (true without author), created_at, subject, body and/or text, recipients
    [{handle, role, name?, contact_id?}], message_uid?, version?. Comments: author, body,
    posted_at, is_pinned. Times are epoch seconds, kept as given (default: now).

    Events: {id?, type, emitted_at?, conversation_id (top level), source, target?,
    deliver?}. source/target are {"_meta": {"type": T}, "data": id or recorded object} or a
    bare id (its prefix names the kind); data is rendered from the seeded record, so links are
    the emulator's. source defaults to the conversation's inboxes for inbound/outbound/
    out_reply; an "api" source without data is the API bot; rule data is {id, name}; imap,
    gmail, reminder and recipient data are kept as given. The event's "conversation" is the
    conversation as seeded (not a snapshot at emitted_at). Seeded events are served by
    /events (window, types, newest first, 15 a page) and /conversations/{id}/events, and
    are delivered as webhooks only with "deliver": true.

        {"company": {"id": "cmp_k30", "name": "Acme"},
         "teammates": [{"id": "tea_6r55a", "email": "pam@acme.example"}],
         "inboxes": [{"id": "inb_1ix6", "name": "Support", "address": "support@acme.example"}],
         "tags": [{"id": "tag_2oxhvy", "name": "sf:opportunity"}],
         "contacts": [{"id": "crd_2njtoem", "handles": [{"handle": "bob@corp.example",
                                                        "source": "email"}]}],
         "conversations": [{
            "id": "cnv_yo1kg5q", "subject": "Quote", "status": "assigned",
            "assignee_id": "tea_6r55a", "inbox_ids": ["inb_1ix6"], "tag_ids": ["tag_2oxhvy"],
            "recipient": {"handle": "bob@corp.example", "role": "from",
                          "contact_id": "crd_2njtoem"},
            "created_at": 1703102600.0,
            "messages": [{"id": "msg_1q15qmtq", "created_at": 1703102600.0, "text": "Price?",
                          "recipients": [{"handle": "bob@corp.example", "role": "from",
                                          "contact_id": "crd_2njtoem"},
                                         {"handle": "support@acme.example", "role": "to"}]}],
            "comments": [{"id": "com_1ywg3f2", "author_id": "tea_6r55a", "body": "Gold",
                          "posted_at": 1703102610.0}],
            "events": [{"id": "evt_4ckcra8e", "type": "inbound", "emitted_at": 1703102600.0,
                        "target": "msg_1q15qmtq"},
                       {"id": "evt_4ckcra9f", "type": "tag", "emitted_at": 1703102616.412,
                        "source": "tea_6r55a", "target": "tag_2oxhvy"}]}]}

Replaying (``POST /__admin/webhooks/replay``)
    "webhooks": recorded application webhook bodies ({"type", "authorization", "payload"}:
    the envelope type is kept), recorded rule webhook bodies (the bare event: the envelope
    type is mapped from the event type), or ids of stored events. Each is delivered like a
    new event to the matching subscriptions (or only "subscription"): app subscribers get
    an envelope with this company's id, rule subscribers the bare event, preview subscribers
    the preview; signed afresh (new timestamp), retried, logged with "replayed": true.
    Absolute links of recorded bodies are moved onto the emulator's base URL. Everything is
    checked before anything is queued (400 naming "webhooks[i]"). Answers {"replayed":
    [{"event_id", "type", "in_world", "subscriptions"}]}; wait with /__admin/webhooks/drain.
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
