"""The one configuration file: YAML, validated into a frozen, typed model.

Errors are collected all at once and reported as ``file:line field: message`` so a user can
fix a file in one pass. Secrets never sit in the file: a value ``${NAME}`` is read from the
environment (``${NAME:-default}`` gives a fallback), and secret fields are ``SecretStr`` so
they never print.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from frontforce.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaConfig(_Model):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    schema_registry_url: str = Field(
        "http://127.0.0.1:8081/apis/ccompat/v7",
        description="Confluent-compatible schema registry base URL.",
    )
    topic_prefix: str = Field("", description="Prefix for every topic name (isolates tenants).")
    partitions: int = Field(3, ge=1, description="Partitions for topics frontforce creates.")
    replication_factor: int = Field(1, ge=1, description="Replication for created topics.")
    delivery_timeout_s: float = Field(
        10.0, gt=0, description="How long a producer waits for the broker's ack before failing."
    )
    linger_ms: int = Field(
        5, ge=0, le=1000,
        description="How long a producer gathers records into one request (the receiver, the "
        "sinks, the sources; the fast lane has worker.lane_linger_ms): more is fewer requests "
        "for the broker, each record that much later.",
    )


class Topics(_Model):
    """Topic names, derived from the prefix so tests and tenants never collide."""

    front_events: str
    salesforce_changes: str
    commands_salesforce: str
    commands_front: str
    audit: str
    deadletter: str
    deadletter_redriven: str
    source_cursors: str
    front_ledger: str
    salesforce_ledger: str

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(
            front_events=f"{prefix}front.events",
            salesforce_changes=f"{prefix}salesforce.changes",
            commands_salesforce=f"{prefix}commands.salesforce",
            commands_front=f"{prefix}commands.front",
            audit=f"{prefix}audit",
            deadletter=f"{prefix}deadletter",
            deadletter_redriven=f"{prefix}deadletter.redriven",
            source_cursors=f"{prefix}source.cursors",
            front_ledger=f"{prefix}front.ledger",
            salesforce_ledger=f"{prefix}salesforce.ledger",
        )


class FrontConfig(_Model):
    app_secret: SecretStr = Field(description="Application webhook secret (HMAC-SHA256 key).")
    rule_secret: SecretStr | None = Field(
        None, description="Webhooks-app API secret for rule webhooks (HMAC-SHA1 key)."
    )
    max_clock_skew_s: int = Field(
        300, ge=1, description="Reject application webhooks whose timestamp is older than this."
    )
    company_id: str | None = Field(
        None, description="Front company id (cmp_..., GET /me). When set, application webhooks"
        " whose authorization.id is another company are refused (403).",
    )
    api_url: str = Field(
        "https://api2.frontapp.com", description="Front Core API base URL (or the emulator's)."
    )
    api_token: SecretStr | None = Field(
        None, description="Front API token (Bearer); needed by backfill, gap-fill and the Front sink."
    )
    rate_share: float = Field(
        1.0, gt=0, le=1,
        description="Share of the company's per-window Front budget (x-ratelimit-limit) frontforce"
        " may spend; the rest stays for the company's other integrations.",
    )
    timeout_s: float = Field(20.0, gt=0, description="HTTP timeout for one Front call.")
    gapfill_overlap_s: float = Field(
        300.0, ge=0,
        description="On receiver start, the Events API is read back from the last stored event"
        " minus this overlap (Front documents no ordering; duplicates are dropped downstream).",
    )


class ReceiverConfig(_Model):
    host: str = Field("127.0.0.1", description="Address the webhook receiver binds.")
    port: int = Field(8090, ge=0, le=65535, description="Port of the webhook receiver.")
    max_body_bytes: int = Field(
        1_000_000, ge=1024,
        description="Largest webhook body accepted (413 beyond, checked before the signature);"
        " keep it at or under the broker's message.max.bytes.",
    )
    read_timeout_s: float = Field(
        10.0, gt=0, description="Time a sender has to deliver the whole body (408 beyond)."
    )
    workers: int = Field(
        1, ge=1, le=64,
        description="Receiver processes sharing the port (one per core is a start; each has its"
        " own Kafka producer, and /healthz and /metrics count the process that answers).",
    )


class SalesforceConfig(_Model):
    login_url: str = Field(
        description="Base URL of the OAuth token endpoint (My Domain, or the emulator)."
    )
    client_id: str = Field(description="Connected app consumer key.")
    auth: Literal["client_credentials", "jwt_bearer"] = Field(
        "client_credentials",
        description="OAuth flow: client credentials (client_secret; the app's Run As user) or the"
        " JWT bearer flow (username + private_key_file; the app holds the certificate).",
    )
    client_secret: SecretStr | None = Field(
        None, description="Connected app consumer secret (client_credentials)."
    )
    username: str | None = Field(None, description="Salesforce username the JWT is issued for (jwt_bearer).")
    private_key_file: Path | None = Field(
        None, description="PEM RSA private key whose certificate the connected app holds (jwt_bearer)."
    )
    jwt_audience: str = Field(
        "https://login.salesforce.com",
        description="JWT aud: https://login.salesforce.com, https://test.salesforce.com (sandbox),"
        " or a community URL.",
    )
    api_version: str = Field("59.0", description="REST API version, without the leading v.")
    ca_bundle: Path | None = Field(
        None, description="PEM bundle to trust instead of the system store (local CA)."
    )
    task_external_id_field: str = Field(
        "Front_Message_Id__c", description="External id field on Task holding the Front message id."
    )
    timeout_s: float = Field(30.0, gt=0, description="HTTP timeout for one Salesforce call.")
    integration_user_id: str | None = Field(
        None, description="Id of the Salesforce user frontforce logs in as, when no other tool uses"
        " it: a change whose commitUser is that user is frontforce's own (loop guard), besides the"
        " changes whose changeOrigin carries frontforce's client id. Unset: changeOrigin only.",
    )

    @field_validator("api_version")
    @classmethod
    def _no_v(cls, v: str) -> str:
        if not re.fullmatch(r"\d+\.\d", v):
            raise ValueError("must look like 59.0 (no leading v)")
        return v

    @model_validator(mode="after")
    def _flow_has_its_credentials(self) -> SalesforceConfig:
        if self.auth == "client_credentials" and self.client_secret is None:
            raise ValueError("client_secret is required for auth: client_credentials")
        if self.auth == "jwt_bearer" and (self.username is None or self.private_key_file is None):
            raise ValueError("username and private_key_file are required for auth: jwt_bearer")
        return self


class SalesforceSourceConfig(_Model):
    """Change Data Capture over the Pub/Sub API (``frontforce source salesforce``) and the
    SOQL load/re-reads that fill its gaps. Authentication is the ``salesforce`` section's."""

    pubsub_url: str = Field(
        "api.pubsub.salesforce.com:7443",
        description="Pub/Sub API endpoint, host:port (gRPC over TLS; trusts salesforce.ca_bundle).",
    )
    topics: list[str] = Field(
        ["/data/ChangeEvents"],
        description="CDC channels to subscribe to, one cursor each: /data/ChangeEvents, or per-entity"
        " channels such as /data/ContactChangeEvent (an org selects at most 5 entities without the add-on).",
    )
    objects: list[str] = Field(
        ["Contact", "Lead", "Account", "Opportunity", "Case", "User"],
        description="Objects loaded and re-read by SOQL; change events of other objects are skipped.",
    )
    custom_fields: dict[str, list[str]] = Field(
        {"Case": ["Front_Conversation_Id__c"]},
        description="Custom fields (per object) carried in custom_fields, e.g. {Account: [Tier__c]}."
        " Case.Front_Conversation_Id__c links a Case to its Front conversation (use cases 6, 7).",
    )
    batch_size: int = Field(
        100, ge=1, le=100, description="Events requested per FetchRequest (num_requested, Salesforce max 100)."
    )
    reread_overlap_s: float = Field(
        300.0, ge=0,
        description="When a stored replay id has expired, re-read records modified since the last covered"
        " commit minus this much (late commits, clock skew).",
    )
    retry_max_delay_s: float = Field(
        30.0, gt=0, description="Longest pause between two reconnects after a transient Pub/Sub or Kafka failure."
    )
    limit_wait_s: float = Field(
        600.0, gt=0, description="Pause after the org's event delivery allocation was exceeded, before resubscribing."
    )
    cursor_prefix: str = Field(
        "salesforce.cdc", description="Key prefix of this source's cursors on source.cursors (<prefix>:<topic>)."
    )


class TagRule(_Model):
    """What a Front tag does in Salesforce (use case 4), on the Contact or Lead the
    conversation's recipient matches. Once per conversation and tag: tagging again, or a
    replay, never makes a second follow-up or note."""

    follow_up_task: str | None = Field(
        None, description="Subject of a follow-up Task (Not Started) on the person and their Account."
    )
    follow_up_days: int = Field(2, ge=0, description="The follow-up Task is due this many days after the tag.")
    chatter_note: str | None = Field(
        None, description="A Chatter note (FeedItem) posted on the person's Account (or on the person)."
    )
    opportunity_stage: str | None = Field(
        None,
        description="StageName set on the Account's open Opportunity (the one closing first) when"
        " the tag is added.",
    )
    on_untag: Literal["nothing", "revert"] = Field(
        "nothing",
        description="Removing the tag: 'revert' puts the Opportunity back to the stage it had"
        " before the tag (the Task and note stay); 'nothing' leaves everything as it is.",
    )


class WorkerConfig(_Model):
    app_id: str = Field("frontforce", description="Faust app id (consumer group, table topics).")
    data_dir: Path = Field(Path(".run/worker"), description="RocksDB table storage directory.")
    web_port: int = Field(6066, ge=0, le=65535, description="Faust worker web port.")
    max_stall_s: float = Field(
        300.0, gt=0,
        description="How long one event may fail transiently (registry or broker down), retried in"
        " place, before the worker stops instead of skipping it.",
    )
    retry_max_delay_s: float = Field(
        10.0, gt=0, description="Longest pause between two in-place retries of one event."
    )
    rocksdb_write_buffer_mb: int = Field(
        4, ge=1, le=1024,
        description="RocksDB memtable size of each table store (Faust's default is 64 MB, times 3"
        " memtables, for every table and partition: most of a restored worker's memory).",
    )
    rocksdb_block_cache_mb: int = Field(
        8, ge=1, le=8192,
        description="RocksDB block cache of each table store (Faust's default: 2 GB each).",
    )
    lane_linger_ms: int = Field(
        50, ge=0, le=1000,
        description="How long the fast lane's producer gathers records into one request. Its"
        " batches are pipelined (nothing waits on one record), so this adds that much latency"
        " and takes requests off the broker: at 1,000 events/s on 2 cores, 50 ms (with"
        " lane_batch_wait_ms 100) took the broker from 0.6 to 0.35-0.45 of a core (BENCHMARKS.md).",
    )
    max_in_flight: int = Field(
        1000, ge=1,
        description="Events an agent may have handled but not yet acknowledged (their records"
        " still on the way to the broker); bounds memory and what a crash replays.",
    )
    batch_size: int = Field(
        500, ge=1, description="Events an agent takes at once (handled one by one, acked one by one)."
    )
    batch_wait_ms: int = Field(
        10, ge=1, description="How long an agent waits, from the first event of a batch, to fill"
        " the batch before it handles what it has (an idle agent does not wake up)."
    )
    lane_batch_wait_ms: int = Field(
        100, ge=1,
        description="How long the fast lane (every message's path) waits to fill a batch before"
        " it handles what it has: fewer, larger batches cost the worker and the broker less per"
        " event (10 ms: far more of both at 1,000 events/s on 2 cores, BENCHMARKS.md).",
    )
    close_cases: bool = Field(
        True,
        description="Use case 6: a Front conversation archived closes its linked Case"
        " (Front_Conversation_Id__c) with a resolution note; reopened reopens it. The newest"
        " event by Front's time wins, whatever the order of delivery.",
    )
    case_closed_status: str = Field("Closed", description="Case Status set when the conversation is archived.")
    case_reopened_status: str = Field("Working", description="Case Status set when the conversation is reopened.")
    case_status_comments: bool = Field(
        True,
        description="Use case 7: a Case status change made in Salesforce (not by frontforce)"
        " posts an internal comment on the linked Front conversation.",
    )
    tag_rules: dict[str, TagRule] = Field(
        {}, description="Use case 4: Front tag name (case-insensitive) -> what it does in Salesforce,"
        " e.g. {'Renewal Risk': {follow_up_task: 'Call about the renewal', chatter_note: '...'}}."
        " Removing the tag does what on_untag says.",
    )
    unknown_sender_leads: bool = Field(
        True,
        description="Use case 2: an inbound message whose sender matches no Contact or Lead"
        " creates one Lead per email (Front_Handle__c), logs the message on it and tags the"
        " conversation 'New Lead' in Front.",
    )
    add_new_handles: bool = Field(
        True,
        description="Use case 2, known people: a handle that matches nothing but belongs to a Front"
        " contact another of whose handles matched a Contact or Lead (an SMS from a new number, a"
        " second address) lands on that record, and is added to it in the first blank field of"
        " its kind (Phone, then MobilePhone; Email), never overwriting one. No Lead is made.",
    )
    task_fields_from_front: dict[str, str] = Field(
        {}, description="Front conversation custom field (by name) -> Task field (API name): the"
        " value the conversation has when a message comes is written on the message's Task, e.g."
        " {Priority: Priority, 'Product area': Product_Area__c}. Checked against describe at start.",
    )
    dedupe_window_s: float = Field(
        3600.0, gt=0,
        description="Loop guard: a Front event whose id was seen within this window (by Kafka"
        " record time; the window it fell in or the one before) is a repeat and dropped: Front's"
        " retries, gap-fill and backfill overlaps, a captured rule webhook replayed. The stream"
        " worker's fast lane holds the ids per partition, logged to a topic of its own; older ones"
        " expire.",
    )
    unmatched_wait_s: float = Field(
        60.0, ge=0,
        description="A message whose handle matches no record waits this long (in a table, across"
        " restarts) for one with that key (a Contact created a minute later, a snapshot still"
        " loading) before it counts as an unknown sender's (use case 2). 0: no wait.",
    )
    waiting_purge_s: float = Field(
        600.0, ge=10,
        description="A waiting entry that was released (its messages matched or made unknown) stays"
        " this long, so a worker replaying its release record finds them again, then is deleted"
        " from the table (a tombstone in its changelog). Far above the commit interval (1 s)."
        " Meanwhile a message with that key does not wait: the wait was answered.",
    )
    match_priority: list[Literal["Contact", "Lead", "Account"]] = Field(
        ["Contact", "Lead", "Account"], min_length=1,
        description="Which kind of record a Front handle lands on when several match: Contact and"
        " Lead by email or phone, Account by the email's domain (its Website). Within one kind"
        " the most recently modified record wins, then the lowest Id.",
    )
    free_mail_domains: list[str] = Field(
        [], description="Domains added to the built-in free-mail list (gmail.com, outlook.com, ...):"
        " never matched to an Account by domain, never a Lead's Company.",
    )
    phone_region: str = Field(
        "US", min_length=2, max_length=2,
        description="Region (ISO 3166 alpha-2) for phone numbers written without a country code,"
        " in Salesforce and in Front; phones are matched as E.164.",
    )
    all_participants: bool = Field(
        False,
        description="Log a message on every external participant that matches (to, cc of an"
        " outbound message) instead of the first one only (Front's own integration's rule).",
    )
    task_owner_from_teammate: bool = Field(
        True,
        description="Use case 1: a Task's owner is the Salesforce User whose email is the Front"
        " teammate's (the author of an outbound message, the assignee of an inbound one); no"
        " such active User leaves the owner to Salesforce (the integration user).",
    )
    route_to_account_owner: bool = Field(
        True,
        description="Use case 5: a new unassigned conversation is assigned to the Front teammate"
        " whose email is the Salesforce User owning the matched Account (or the matched Lead).",
    )
    salesforce_context: bool = Field(
        True,
        description="Use case 3: every Salesforce Account is a Front account (external id = the"
        " Account Id) with its Contacts linked, and the Account's context (context_fields) in"
        " the custom fields of the account and of its contacts, sent within seconds of a change.",
    )
    context_fields: dict[str, str] = Field(
        {"ARR": "AnnualRevenue", "Tier": "Type", "Account owner": "owner",
         "Open opportunities": "open_opportunities"},
        description="Front custom field name -> what it shows: an Account field (AnnualRevenue,"
        " Type, a custom field listed in salesforce_source.custom_fields.Account), 'owner' (the"
        " owner's name) or 'open_opportunities' (count, total amount, stages). The fields must"
        " exist in Front for accounts and contacts.",
    )
    salesforce_web_url: str | None = Field(
        None,
        description="Salesforce's web address (https://<domain>.lightning.force.com): Front"
        " contacts get a link to their Contact there. Unset: no link.",
    )


_EXCLUDABLE_OBJECTS = frozenset({"Task", "Lead", "Contact", "Account", "Opportunity", "Case", "FeedItem"})
_NOT_EXCLUDABLE = {"Task": {"WhoId", "WhatId", "ActivityDate", "Status"},
                   "Lead": {"LastName", "Company"}, "Case": {"Status"}}


class PrivacyConfig(_Model):
    """What may leave ``front.events`` (streams/_privacy.py). Private conversations never sync."""

    inboxes_allow: list[str] = Field(
        [], description="Front inbox ids whose conversations sync; empty: every inbox not denied."
    )
    inboxes_deny: list[str] = Field([], description="Front inbox ids whose conversations never sync.")
    mask_builtin: list[Literal["card_numbers", "us_ssn"]] = Field(
        ["card_numbers", "us_ssn"],
        description="Built-in masks applied to message text and subjects: card numbers (Luhn"
        " checked) and US social security numbers.",
    )
    mask_patterns: list[str] = Field(
        [], description="More regular expressions to mask (Python syntax), e.g. a national id format."
    )
    mask_with: str = Field("[masked]", description="What a masked span is replaced with.")
    exclude_fields: dict[str, list[str]] = Field(
        {}, description="Salesforce object -> field API names frontforce never writes to it (e.g."
        " {Task: [Description]}: no message text in Salesforce) nor shows from it in Front (e.g."
        " {Account: [AnnualRevenue]}). Fields a write cannot do without are refused here: a"
        " Task's WhoId, WhatId, ActivityDate and Status, a Lead's LastName and Company, a Case's"
        " Status.",
    )

    @field_validator("exclude_fields")
    @classmethod
    def _excludable(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for sobject, fields in value.items():
            if sobject not in _EXCLUDABLE_OBJECTS:
                raise ValueError(f"{sobject!r} is not an object frontforce writes or shows; one of "
                                 f"{', '.join(sorted(_EXCLUDABLE_OBJECTS))}")
            needed = sorted(set(fields) & _NOT_EXCLUDABLE.get(sobject, set()))
            if needed:
                raise ValueError(f"{sobject}.{needed[0]} cannot be excluded: a {sobject} cannot be"
                                 " written without it")
        return value

    @field_validator("mask_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {p!r}: {exc}") from exc
        return patterns


class SinkConfig(_Model):
    mapping_recheck_s: float = Field(
        3600.0, gt=0,
        description="How often the sink reads describe again to check that every mapped field and"
        " picklist value still exists (one call per mapped object); a new problem is an alert.",
    )
    group_id: str = Field("frontforce-sink-salesforce", description="Consumer group of the sink.")
    batch_size: int = Field(
        1000, ge=1, le=1000,
        description="Commands per flush: the flush is written when this many arrived or"
        " batch_wait_ms passed. Its sObject Collections requests (200 records each) go as"
        " subrequests of one /composite call, five at most: 1000 Tasks are one API call.",
    )
    batch_wait_ms: int = Field(
        1000, ge=0,
        description="How long to wait for a batch to fill before writing it (the flush window),"
        " counted from the start of the previous flush: when a write took longer than the"
        " window, the commands that arrived meanwhile are written at once. 1000 ms keeps a"
        " 200 messages/s stream, a fifth of it from unknown senders (Lead + Task), near 0.006"
        " API calls a message; 500 ms near 0.009, too close to the 0.01 bound,"
        " for about 0.5 s less at the sink (BENCHMARKS.md).",
    )
    max_attempts: int = Field(
        8, ge=1,
        description="Attempts at a batch's Salesforce writes (within retry_max_s) before the sink stops.",
    )
    salesforce_quota_share: float = Field(
        0.5, gt=0, le=1,
        description="Share of the org's daily API allocation this sink may use before pausing.",
    )
    budget_recheck_s: float = Field(
        60.0, gt=0, description="While paused at the API budget, how often to re-read Salesforce's /limits."
    )
    retry_max_s: float = Field(
        300.0, gt=0,
        description="How long a transient failure (registry, broker, Salesforce) is retried in place "
        "before the sink stops.",
    )
    max_poll_interval_ms: int = Field(
        300000, ge=10000,
        description="Consumer max.poll.interval.ms; mid-batch the sink polls (partitions paused) "
        "before half of it has passed.",
    )


class FrontSinkConfig(_Model):
    """``frontforce sink front``: executes ``commands.front`` against Front's Core API."""

    group_id: str = Field("frontforce-sink-front", description="Consumer group of the Front sink.")
    flush_window_ms: int = Field(
        2000, ge=0,
        description="How long commands are gathered before they are written: writes to one"
        " conversation or contact within a window are merged into as few Front calls as possible.",
    )
    batch_size: int = Field(
        1000, ge=1, description="Most commands gathered in one flush window (the window ends early when full)."
    )
    retry_max_s: float = Field(
        300.0, gt=0,
        description="How long a transient failure (registry, broker, Front 5xx or no answer) is retried"
        " in place before the sink stops without committing. Front 429s are waited out, never counted.",
    )
    max_poll_interval_ms: int = Field(
        300000, ge=10000,
        description="Consumer max.poll.interval.ms; mid-batch the sink polls (partitions paused) before"
        " half of it has passed.",
    )
    session_timeout_ms: int = Field(
        10000, ge=6000,
        description="Consumer session.timeout.ms: how long after a crash the group hands this"
        " member's partitions to another (or to its own restart).",
    )
    max_comment_chars: int = Field(
        20000, ge=100,
        description="AddComment commands for one conversation and author in one window are posted as one"
        " comment up to this many characters (then a second one).",
    )
    ledger_timeout_s: float = Field(
        120.0, gt=0, description="How long reading the ledger topic to its end may take at start."
    )


class MetricsConfig(_Model):
    """Prometheus metrics (``frontforce/metrics.py``): each process serves its own at
    ``http://host:port/metrics``. The receiver serves them on its own port (``/metrics``),
    the status page on its port. A port set to null serves nothing; 0 takes any free port
    (logged). A port already in use is logged and the process runs on without metrics."""

    host: str = Field("127.0.0.1", description="Address the metrics endpoints bind (0.0.0.0 for a remote Prometheus).")
    sink_salesforce_port: int | None = Field(9471, ge=0, le=65535, description="Port of `sink salesforce`'s metrics.")
    sink_front_port: int | None = Field(9472, ge=0, le=65535, description="Port of `sink front`'s metrics.")
    source_salesforce_port: int | None = Field(
        9473, ge=0, le=65535, description="Port of `source salesforce`'s metrics.")
    worker_port: int | None = Field(
        9474, ge=0, le=65535, description="Port of a stream worker's metrics (a second worker on the"
        " same host finds it taken and runs without).")


class Settings(_Model):
    kafka: KafkaConfig = KafkaConfig()  # type: ignore[call-arg]
    front: FrontConfig
    receiver: ReceiverConfig = ReceiverConfig()  # type: ignore[call-arg]
    salesforce: SalesforceConfig
    salesforce_source: SalesforceSourceConfig = SalesforceSourceConfig()  # type: ignore[call-arg]
    worker: WorkerConfig = WorkerConfig()  # type: ignore[call-arg]
    sink: SinkConfig = SinkConfig()  # type: ignore[call-arg]
    privacy: PrivacyConfig = PrivacyConfig()  # type: ignore[call-arg]
    front_sink: FrontSinkConfig = FrontSinkConfig()  # type: ignore[call-arg]
    metrics: MetricsConfig = MetricsConfig()  # type: ignore[call-arg]

    @property
    def topics(self) -> Topics:
        return Topics.with_prefix(self.kafka.topic_prefix)

    @property
    def fast_lane_group(self) -> str:
        """The consumer group in which the stream workers' fast lanes read front.events."""
        return f"{self.worker.app_id}-front-events"

    @property
    def worker_topics(self) -> dict[str, str]:
        """Repartition topics of the stream worker, named after its app id. ``setup``
        creates them up front: a Faust worker that subscribes before a topic exists ignores
        it until the next rebalance."""
        a = self.worker.app_id
        return {"match_keys": f"{a}-match-keys", "by_handle": f"{a}-front-by-handle",
                "by_account": f"{a}-changes-by-account",
                "tags_by_account": f"{a}-tags-by-account",
                "release": f"{a}-release-waiting",
                "contact_notes": f"{a}-front-contact-notes",
                "by_contact": f"{a}-front-by-contact",
                "new_handles": f"{a}-new-handles",
                # Archive/reopen events by conversation, for the case-status agent.
                "case_events": f"{a}-front-case-events",
                # The fast lane's dedupe log (partition = front.events partition).
                "seen": f"{a}-front-events-seen"}

    @property
    def worker_table_topics(self) -> dict[str, str]:
        """Changelog topics of the worker's tables: Faust creates them (compacted); their
        values are registered Avro like every other topic."""
        return {"match_table": f"{self.worker.app_id}-record-match-changelog",
                "conversation_table": f"{self.worker.app_id}-conversation-state-changelog",
                "case_links_table": f"{self.worker.app_id}-case-links-changelog",
                "record_table": f"{self.worker.app_id}-record-keys-changelog",
                "reference_table": f"{self.worker.app_id}-reference-changelog",
                "context_table": f"{self.worker.app_id}-account-context-changelog",
                "waiting_table": f"{self.worker.app_id}-waiting-events-changelog",
                "front_contact_table": f"{self.worker.app_id}-front-contacts-changelog"}


def _lines(node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]) -> None:
    """Record the 1-based line of every key/value in the YAML tree, by path."""
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            out[path + (key,)] = key_node.start_mark.line + 1
            _lines(value_node, path + (key,), out)
            out[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, path + (i,), out)


def _expand_env(value: Any, path: tuple[str | int, ...], missing: list[tuple[tuple[str | int, ...], str]]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, path + (k,), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, path + (i,), missing) for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            missing.append((path, name))
            return ""

        return _ENV_REF.sub(sub, value)
    return value


def parse_settings(text: str, source: str = "<config>") -> Settings:
    """Parse and validate; raise ``ConfigError`` listing every problem with its line."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError([f"{source}:{line} (yaml): {exc}"]) from exc
    lines: dict[tuple[str | int, ...], int] = {}
    if root is not None:
        _lines(root, (), lines)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1 (root): expected a mapping of sections"])
    missing: list[tuple[tuple[str | int, ...], str]] = []
    data = _expand_env(data, (), missing)
    problems = [
        f"{source}:{lines.get(p, 0)} {'.'.join(map(str, p))}: environment variable {name} is not set"
        for p, name in missing
    ]
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = _nearest_line(loc, lines)
            problems.append(f"{source}:{line} {'.'.join(map(str, loc))}: {err['msg']}")
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings


def _nearest_line(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int:
    # A missing field has no line of its own: point at its closest existing parent.
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 0


def load_settings(path: str | Path) -> Settings:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}:0 (file): cannot read: {exc.strerror}"]) from exc
    return parse_settings(text, str(p))
