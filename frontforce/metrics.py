"""Prometheus metrics: every metric a frontforce process exports is defined here, once, so
the receiver, the sinks, the Salesforce source and the stream worker count the same facts
under the same names, and a dashboard or the status page reads one vocabulary.

Each process serves its own registry over HTTP (``serve``; the port is the process's
``metrics.*_port``, the receiver serves ``/metrics`` on its own port). A process counts only
what it does itself; Prometheus adds them up (``sum by (topic) (rate(...))``).

What every process counts (labels in brackets):

- ``frontforce_records_in_total[topic]``: records consumed (the sinks: what they took from
  their command topic; the worker: events read from its source topics);
- ``frontforce_records_out_total[topic]``: records produced AND acknowledged by the broker
  (front.events by the receiver, salesforce.changes by the source, audit/dead letters/ledger
  entries by the sinks, commands by the worker);
- ``frontforce_api_calls_total[api]``: calls to Salesforce or Front (every HTTP request,
  refused ones included: they count against the quota too);
- ``frontforce_salesforce_api_used`` / ``frontforce_salesforce_api_max``: the org's daily
  API requests, from each answer's ``Sforce-Limit-Info`` and from ``/limits``
  (``DailyApiRequests``);
- ``frontforce_front_ratelimit_remaining`` / ``frontforce_front_ratelimit_limit``: Front's
  company window, from ``x-ratelimit-remaining`` / ``x-ratelimit-limit``;
- ``frontforce_throttled_total[api]``: a Front 429, a Salesforce budget pause;
- ``frontforce_retries_total[stage]``: transient failures retried in place;
- ``frontforce_dead_letters_total[stage]``: records dead-lettered (stage as on the record);
- ``frontforce_webhooks_accepted_total[kind]``, ``frontforce_webhooks_refused_total[reason]``:
  the receiver's answers (refusals by reason);
- ``frontforce_webhook_to_salesforce_seconds``: from the webhook's arrival at the receiver
  (the ``frontforce-received-at`` header of a command, epoch ms, when the worker sets it) to
  the Salesforce write that logged it;
- ``frontforce_command_to_write_seconds[target]``: from a command's ``created_at`` to its
  write (salesforce or front): the sinks' share of the latency, always measured.

The worker's own (``streams/``): ``frontforce_worker_events_total[topic,outcome]`` and
``frontforce_worker_event_seconds`` besides the shared ones above; see the README for where
each is counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = structlog.get_logger("frontforce.metrics")

# Header a command may carry: when the webhook it comes from reached the receiver (epoch ms,
# ASCII digits). The worker copies front.events' received_at into it.
RECEIVED_AT_HEADER = "frontforce-received-at"

RECORDS_IN = Counter("frontforce_records_in", "Records consumed, by topic", ["topic"])
RECORDS_OUT = Counter("frontforce_records_out",
                      "Records produced and acknowledged by the broker, by topic", ["topic"])
API_CALLS = Counter("frontforce_api_calls", "Calls to a remote API (refused ones included)", ["api"])
THROTTLED = Counter("frontforce_throttled",
                    "Times a remote asked to wait: Front 429, Salesforce budget pause", ["api"])
RETRIES = Counter("frontforce_retries", "Transient failures retried in place, by stage", ["stage"])
DEAD_LETTERS = Counter("frontforce_dead_letters", "Records dead-lettered, by stage", ["stage"])
FAUST_SKIPS = Counter("frontforce_faust_skipped_records",
                      "Records Faust's consumer skipped, read back and handled, by topic", ["topic"])
SALESFORCE_API_USED = Gauge("frontforce_salesforce_api_used",
                            "Salesforce daily API requests used (Sforce-Limit-Info, /limits)")
SALESFORCE_API_MAX = Gauge("frontforce_salesforce_api_max", "Salesforce daily API requests allowed")
FRONT_RATELIMIT_REMAINING = Gauge("frontforce_front_ratelimit_remaining",
                                  "Front calls left in the company's window (x-ratelimit-remaining)")
FRONT_RATELIMIT_LIMIT = Gauge("frontforce_front_ratelimit_limit",
                              "Front calls allowed per window (x-ratelimit-limit)")
WEBHOOKS_ACCEPTED = Counter("frontforce_webhooks_accepted", "Front webhooks stored on Kafka (2xx)", ["kind"])
WEBHOOKS_REFUSED = Counter("frontforce_webhooks_refused", "Front webhooks refused, by reason", ["reason"])

_LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
WEBHOOK_TO_SALESFORCE = Histogram(
    "frontforce_webhook_to_salesforce_seconds",
    "From a Front webhook's arrival at the receiver to the Salesforce write it caused",
    buckets=_LATENCY_BUCKETS)
COMMAND_TO_WRITE = Histogram(
    "frontforce_command_to_write_seconds", "From a command's created_at to its write, by target",
    ["target"], buckets=_LATENCY_BUCKETS)

# The stream worker's (wired in streams/ by its owner).
WORKER_EVENTS = Counter("frontforce_worker_events",
                        "Events the worker handled, by topic and outcome "
                        "(commands, nothing, duplicate, private, dead_letter)", ["topic", "outcome"])
WORKER_EVENT_SECONDS = Histogram("frontforce_worker_event_seconds",
                                 "Time the worker spent on one event, until its sends were queued",
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))


def serve(port: int | None, host: str = "127.0.0.1", process: str = "") -> int | None:
    """Serve this process's metrics at ``http://host:port/metrics`` from a daemon thread;
    the port it listens on (``0``: any free one). ``None`` (the setting) serves nothing. A
    port already taken is logged and the process runs on without metrics: a second sink on
    one host must not die for its metrics endpoint."""
    if port is None:
        return None
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics not served: port unavailable", process=process, host=host, port=port,
                    error=str(exc))
        return None
    bound = int(server.server_port)
    log.info("metrics served", process=process, url=f"http://{host}:{bound}/metrics")
    return bound


def _or_nan(fn: Callable[[], Any]) -> Callable[[], float]:
    def read() -> float:
        value = fn()
        return math.nan if value is None else float(value)
    return read


def watch_salesforce_budget(budget: Any) -> None:
    """Export a sink's ``Budget`` (used/total from headers and /limits) as the quota gauges,
    read at scrape time (NaN until the first answer)."""
    SALESFORCE_API_USED.set_function(_or_nan(lambda: budget.used))
    SALESFORCE_API_MAX.set_function(_or_nan(lambda: budget.total))


def observe_write(target: str, command: Mapping[str, Any], headers: Any = None,
                  now: float | None = None) -> None:
    """A command was written (CREATED/UPDATED): its latency since ``created_at``, and for
    Salesforce since the webhook's arrival when the command carries ``RECEIVED_AT_HEADER``."""
    now = time.time() if now is None else now
    created = command.get("created_at")
    if created is not None:
        at = created.timestamp() if hasattr(created, "timestamp") else float(created) / 1000.0
        COMMAND_TO_WRITE.labels(target).observe(max(0.0, now - at))
    if target != "salesforce":
        return
    received = header_value(headers, RECEIVED_AT_HEADER)
    if received is not None:
        try:
            WEBHOOK_TO_SALESFORCE.observe(max(0.0, now - int(received) / 1000.0))
        except ValueError:
            pass


def header_value(headers: Any, name: str) -> str | None:
    """A Kafka record header's value as text (confluent-kafka: a list of (key, bytes))."""
    for item in headers or []:
        if item[0] == name and item[1] is not None:
            v = item[1]
            return v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
    return None
