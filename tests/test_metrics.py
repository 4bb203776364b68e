"""Metrics and logs of the running processes (frontforce/metrics.py, frontforce/logs.py).

End to end, as separate processes (receiver, worker, Salesforce sink, Front sink, Salesforce
source) on the real broker, registry and emulators: each serves Prometheus metrics on its
HTTP port and counts what it did; the Front event id, as ``correlation_id``, is on the
receiver's ``event stored`` line and on the Salesforce sink's ``command applied`` line that
names the Task's Salesforce id; no line carries the webhook secret, the API tokens or what
privacy masks (a card number in the message).

The incident guarded: metrics that exist in code but are not served by the process that
counts them, and log lines that cannot be joined from Front to Salesforce."""

from __future__ import annotations

import json
import re
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emulators.front import WebhookEmitter, inbound_email_event
from emulators.scenario import people, seed_salesforce
from frontforce import metrics
from frontforce.lag import describe_lag, wait_settled
from frontforce.localstack import LocalStack, free_port
from tests.conftest import new_pipeline

KNOWN = people(4, seed=11)
CARD = "4111 1111 1111 1111"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def pipeline(infra: LocalStack,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, dict[str, int]]]:
    stack = new_pipeline(infra, tmp_path_factory.mktemp("metrics"))
    ports = {"sink_salesforce_port": free_port(), "sink_front_port": free_port(),
             "source_salesforce_port": free_port(), "worker_port": free_port()}
    try:
        stack.start_salesforce()
        stack.start_front()
        config = stack.write_config()
        config.write_text(config.read_text() + "metrics:\n"
                          + "".join(f"  {k}: {v}\n" for k, v in ports.items()))
        stack.frontforce("setup")
        assert stack.ca_file is not None
        seed_salesforce(stack.salesforce_url, str(stack.ca_file), KNOWN)
        stack.frontforce("load", "salesforce")
        stack.start_pipeline()
        groups = {stack.app_id: stack.worker_groups[stack.app_id][:2]}
        assert wait_settled(stack.bootstrap, groups, timeout_s=90), describe_lag(stack.bootstrap, groups)
        yield stack, ports
    finally:
        stack.stop_all(infra=False)


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        start = line.find("{")  # Faust's handler prefixes our JSON with its own fields
        if start < 0:
            continue
        try:
            doc = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def test_every_process_serves_its_metrics_and_one_correlation_id_joins_front_to_salesforce(
        pipeline: tuple[LocalStack, dict[str, int]]) -> None:
    stack, ports = pipeline
    tag = uuid.uuid4().hex[:6]
    event_id, message_id = f"evt_{tag}", f"msg_{tag}"
    emitter = WebhookEmitter(stack.receiver_url, stack.app_secret.encode())
    assert emitter.deliver(inbound_email_event(
        base_url="https://acme.api.frontapp.com", event_id=event_id, conversation_id=f"cnv_{tag}",
        message_id=message_id, inbox_id="inb_1", sender=KNOWN[0].email, sender_name=None,
        to="support@acme.example", subject="Card on file", text=f"My card is {CARD}, thanks",
        emitted_at=time.time())) == 200
    p = stack.topic_prefix

    # The sink wrote the Task: its metrics say so, with the latency of the write, and its
    # audit record went out (with the next flush, or once nothing new arrives).
    deadline = time.monotonic() + 60
    sink: dict[Any, float] = {}
    while time.monotonic() < deadline:
        sink = scrape(ports["sink_salesforce_port"])
        if (value(sink, "frontforce_command_to_write_seconds_count", target="salesforce") >= 1
                and value(sink, "frontforce_records_out_total", topic=f"{stack.topic_prefix}audit") >= 1):
            break
        time.sleep(0.5)
    assert value(sink, "frontforce_records_in_total", topic=f"{p}commands.salesforce") >= 1, sink
    assert value(sink, "frontforce_records_out_total", topic=f"{p}audit") >= 1
    assert value(sink, "frontforce_api_calls_total", api="salesforce") >= 7  # describes, /limits, the write
    assert 0 < value(sink, "frontforce_salesforce_api_used") <= value(sink, "frontforce_salesforce_api_max")
    assert value(sink, "frontforce_command_to_write_seconds_count", target="salesforce") >= 1
    # ... and since the webhook reached the receiver: the worker carried its received_at on
    # to the Task command (a header the sink reads).
    assert value(sink, "frontforce_webhook_to_salesforce_seconds_count") >= 1, sink
    assert 0 < value(sink, "frontforce_webhook_to_salesforce_seconds_sum") < 60, sink

    receiver = scrape(stack.ports.receiver)
    assert value(receiver, "frontforce_webhooks_accepted_total", kind="app") >= 1
    assert value(receiver, "frontforce_records_out_total", topic=f"{p}front.events") >= 1
    # A change in Salesforce: the source reads its event and produces it.
    assert stack.ca_file is not None
    tls = ssl.create_default_context(cafile=str(stack.ca_file))
    httpx.post(f"{stack.salesforce_url}/__admin/seed", verify=tls, json={"records": {
        "Contact": [{"LastName": f"Metrics {tag}", "Email": f"m-{tag}@example.com"}]}}).raise_for_status()
    deadline = time.monotonic() + 30
    source: dict[Any, float] = {}
    while time.monotonic() < deadline:
        source = scrape(ports["source_salesforce_port"])
        if value(source, "frontforce_records_out_total", topic=f"{p}salesforce.changes") >= 1:
            break
        time.sleep(0.5)
    assert value(source, "frontforce_records_out_total", topic=f"{p}salesforce.changes") >= 1, source
    assert value(source, "frontforce_records_in_total", topic="/data/ChangeEvents") >= 1, source
    front = httpx.get(f"http://127.0.0.1:{ports['sink_front_port']}/metrics", timeout=10).text
    assert "# TYPE frontforce_records_in_total counter" in front  # the Front sink serves its own

    # One correlation id, from the receiver's line to the sink's line with the Task's id.
    def lines(name: str) -> list[dict[str, Any]]:
        return log_lines(stack.logs / f"{name}.log")

    deadline = time.monotonic() + 10
    applied: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not applied:
        applied = [d for d in lines("sink-salesforce") if d.get("event") == "command applied"
                   and d.get("correlation_id") == event_id]
        time.sleep(0.3)
    assert applied and str(applied[0].get("record_id", "")).startswith("00T"), applied
    stored = [d for d in lines("receiver") if d.get("event") == "event stored"]
    assert any(d.get("correlation_id") == event_id for d in stored), stored[-3:]

    # No secret, no card number, in any process's log.
    digits = CARD.replace(" ", "")
    for name in ("receiver", "worker", "sink-salesforce", "sink-front", "source-salesforce"):
        log = stack.logs / f"{name}.log"
        text = log.read_text(errors="replace")
        assert stack.app_secret not in text, log
        assert stack.front_token not in text and stack.sf_client_secret not in text, log
        assert CARD not in text and digits not in text, log


def test_serve_binds_a_free_port_and_survives_a_taken_one() -> None:
    port = metrics.serve(0, "127.0.0.1", "test")
    assert port is not None
    metrics.RETRIES.labels("test.stage").inc()
    assert value(scrape(port), "frontforce_retries_total", stage="test.stage") >= 1
    assert metrics.serve(port, "127.0.0.1", "test") is None  # taken: logged, not raised
    assert metrics.serve(None) is None


def test_write_latency_from_the_command_and_from_the_webhook() -> None:
    before_cmd = metrics.COMMAND_TO_WRITE.labels("salesforce")._sum.get()  # type: ignore[attr-defined]
    before_hook = metrics.WEBHOOK_TO_SALESFORCE._sum.get()  # type: ignore[attr-defined]
    now = 1_000_000.0
    metrics.observe_write("salesforce", {"created_at": int((now - 2) * 1000)},
                          [(metrics.RECEIVED_AT_HEADER, str(int((now - 5) * 1000)).encode())], now=now)
    assert metrics.COMMAND_TO_WRITE.labels("salesforce")._sum.get() - before_cmd == pytest.approx(2.0)  # type: ignore[attr-defined]
    assert metrics.WEBHOOK_TO_SALESFORCE._sum.get() - before_hook == pytest.approx(5.0)  # type: ignore[attr-defined]
    assert re.match(r"\d+", metrics.header_value([("x", b"1")], "x") or "")
