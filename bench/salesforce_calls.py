"""Salesforce API calls per logged Front message, the sink against the naive pattern.

    .venv/bin/python bench/salesforce_calls.py --messages 10000 --rate 200 --naive 1000
    .venv/bin/python bench/salesforce_calls.py --messages 10000 --rate 200 --naive 1000 \\
        --batch-wait-ms 1000
    .venv/bin/python bench/salesforce_calls.py --messages 10000 --rate 200 --naive 0 \\
        --unknown-share 0.2

Starts its own stack (free ports, throw-away state), seeds the Salesforce emulator with
``--contacts`` Contacts and loads the snapshot. Then, in this order, against that one
emulator, counting every request at the emulator (``GET /__admin/requests?since=``, which
sees logins and ``/limits`` too):

1. the naive pattern of an iPaaS template, before the pipeline runs: for each of
   ``--naive`` messages a SOQL lookup of the Contact by email, then a single-record Task
   create (simple-salesforce, one login first);
2. the pipeline (receiver + worker + sink, ``sink.batch_wait_ms`` from ``--batch-wait-ms``
   written into the stack's config): ``--messages`` signed inbound-message webhooks from
   known Contacts, paced at ``--rate`` a second by ``--concurrency`` senders on one shared
   schedule (a sender behind schedule sends at once); waits until the groups have no lag
   and every Task is in the emulator; counts every request since the sink started (its
   login, describe and ``/limits`` included). The sink's writes are sObject Collections
   requests sent alone or ``/composite`` calls carrying several (one API call each).

End-to-end latency per message: the Task's ``CreatedDate`` (the emulator's write time,
milliseconds) minus the moment the receiver answered 2xx for its webhook. Prints one JSON
line; BENCHMARKS.md records runs with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import yaml
from confluent_kafka import Consumer, TopicPartition
from simple_salesforce import SFType

from emulators.front import WebhookEmitter, inbound_email_event
from emulators.scenario import Person, people, seed_salesforce
from frontforce.lag import describe_lag, wait_settled
from frontforce.localstack import LocalStack, Ports, free_port
from frontforce.salesforce import connect
from frontforce.serialization import Serde

RUN = "msg_sfc"  # Front message ids of this run: f"{RUN}{i}"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, int(round(q * len(s))) - 1))], 1)


def kinds(counts: dict[str, Any]) -> dict[str, int]:
    """Requests per call kind, from ``/__admin/requests`` keys ("METHOD path")."""
    out: dict[str, int] = {}
    for key, n in counts["requests"].items():
        method, path = key.split(" ", 1)
        if path.startswith("/services/oauth2/token"):
            kind = "login"
        elif path.endswith("/describe"):
            kind = "describe"
        elif path.endswith("/limits") or path.endswith("/limits/"):
            kind = "limits"
        elif "/composite/sobjects" in path:
            kind = f"composite/sobjects {method}"
        elif path.endswith("/composite"):
            kind = f"composite {method}"
        elif path.endswith("/query") or "/query/" in path:
            kind = "query"
        elif "/sobjects/" in path:
            kind = f"sobjects {method}"
        else:
            kind = key
        out[kind] = out.get(kind, 0) + n
    return out


def set_batch_wait(stack: LocalStack, batch_wait_ms: int | None) -> int:
    """Write ``sink.batch_wait_ms`` into the stack's frontforce.yaml; return the value the
    pipeline will run with (as its processes read the file)."""
    path = stack.state_dir / "frontforce.yaml"
    if batch_wait_ms is not None:
        conf = yaml.safe_load(path.read_text())
        conf.setdefault("sink", {})["batch_wait_ms"] = batch_wait_ms
        path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return stack.settings().sink.batch_wait_ms


def command_times(stack: LocalStack) -> dict[str, float]:
    """Front message id -> epoch s at which the worker built its UpsertTask (``created_at``
    of the command on commands.salesforce): splits the latency into worker and sink."""
    settings = stack.settings()
    topic = settings.topics.commands_salesforce
    serde = Serde(settings)
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "bench-sfc-reader",
                         "enable.auto.commit": False})
    out: dict[str, float] = {}
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + 120
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=1.0):
                if msg.error():
                    continue
                cmd = serde.decode(topic, msg.value())
                _, op = cmd["operation"]
                if str(op.get("external_id", "")).startswith(RUN):
                    at = cmd["created_at"]  # timestamp-millis: a datetime once decoded
                    out[op["external_id"]] = (at.timestamp() if isinstance(at, datetime)
                                              else int(at) / 1000)
                if (msg.offset() or 0) + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
    finally:
        consumer.close()
    return out


def start_pipeline(stack: LocalStack) -> None:
    """Receiver, worker and Salesforce sink, nothing else: every request the emulator sees
    from now on is the sink's (``LocalStack.start_pipeline`` may start more processes that
    call Salesforce, e.g. the change subscription, whose login would be counted here)."""
    stack.spawn("worker", "worker")
    stack.spawn("sink-salesforce", "sink", "salesforce")
    stack.spawn("receiver", "receiver")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for name, proc in stack.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {stack.logs}")
        try:
            if httpx.get(f"http://127.0.0.1:{stack.ports.receiver}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"receiver did not answer; see {stack.logs}")


def naive(stack: LocalStack, known: list[Person], n: int) -> dict[str, Any]:
    """Lookup-then-create, one message after the other, as an iPaaS template does."""
    sf = connect(stack.settings().salesforce).client
    tasks = cast(SFType, sf.Task)
    per_message = []
    for i in range(n):
        person = known[i % len(known)]
        s = time.monotonic()
        email = person.email.replace("\\", "\\\\").replace("'", "\\'")
        found = sf.query(f"SELECT Id, AccountId FROM Contact WHERE Email = '{email}' LIMIT 1")
        contact = found["records"][0]
        task = {"WhoId": contact["Id"], "Subject": "Inbound email: Benchmark (naive)",
                "Description": "x" * 400, "Status": "Completed", "TaskSubtype": "Email",
                "ActivityDate": date.today().isoformat()}
        if contact.get("AccountId"):
            task["WhatId"] = contact["AccountId"]
        tasks.create(task)
        per_message.append((time.monotonic() - s) * 1000)
    return {"messages": n, "ms_per_message_p50": pct(per_message, 0.5),
            "ms_per_message_p99": pct(per_message, 0.99)}


class Senders:
    """``concurrency`` threads sending message i at t0 + i / rate (open loop)."""

    def __init__(self, stack: LocalStack, known: list[Person], messages: int, rate: float,
                 concurrency: int, unknown_share: float = 0.0) -> None:
        self.stack, self.known, self.messages = stack, known, messages
        # Every 1/share-th message from a new unknown sender: a Lead and its Task each.
        self.unknown_every = round(1 / unknown_share) if unknown_share > 0 else 0
        self.strangers: set[str] = set()
        self.rate, self.concurrency = rate, concurrency
        self.lock = threading.Lock()
        self.next = 0
        self.accepted: dict[str, float] = {}  # message id -> epoch s of the 2xx
        self.latency_ms: list[float] = []
        self.late_ms: list[float] = []  # how far behind schedule each send started
        self.failed = 0
        self.t0 = 0.0
        self.t0_epoch = 0.0

    def _take(self) -> int | None:
        with self.lock:
            if self.next >= self.messages:
                return None
            self.next += 1
            return self.next - 1

    def _run(self) -> None:
        emitter = WebhookEmitter(self.stack.receiver_url, self.stack.app_secret.encode())
        try:
            while (i := self._take()) is not None:
                due = self.t0 + i / self.rate
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                sender = self.known[i % len(self.known)].email
                if self.unknown_every and i % self.unknown_every == 0:
                    sender = f"stranger{i}@newco{i % 7}.example"
                    with self.lock:
                        self.strangers.add(sender)
                ev = inbound_email_event(
                    base_url="https://acme.api.frontapp.com", event_id=f"evt_sfc{i}",
                    conversation_id=f"cnv_sfc{i % 2000}", message_id=f"{RUN}{i}",
                    inbox_id="inb_1", sender=sender, sender_name=None,
                    to="support@acme.example", subject="Benchmark", text="x" * 400,
                    emitted_at=time.time())
                s = time.monotonic()
                status = emitter.deliver(ev)
                done = time.monotonic()
                with self.lock:
                    self.late_ms.append(max(0.0, s - due) * 1000)
                    if 200 <= status < 300:
                        self.accepted[f"{RUN}{i}"] = time.time()
                        self.latency_ms.append((done - s) * 1000)
                    else:
                        self.failed += 1
        finally:
            emitter.close()

    def run(self) -> tuple[float, float]:
        """Send everything; return (first send, last 2xx) in monotonic seconds."""
        self.t0 = time.monotonic() + 0.2
        self.t0_epoch = time.time() + 0.2
        threads = [threading.Thread(target=self._run, daemon=True)
                   for _ in range(self.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return self.t0, time.monotonic()


def main() -> None:
    ap = argparse.ArgumentParser(description="Salesforce API calls per logged Front message.")
    ap.add_argument("--messages", type=int, default=10000, help="webhooks through the pipeline")
    ap.add_argument("--rate", type=float, default=200.0, help="webhooks a second (paced)")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent webhook senders")
    ap.add_argument("--contacts", type=int, default=1000, help="known Contacts seeded")
    ap.add_argument("--unknown-share", type=float, default=0.0,
                    help="share of messages from new unknown senders: a Lead + a Task each")
    ap.add_argument("--naive", type=int, default=1000,
                    help="messages through the naive lookup-then-create pattern (0: none)")
    ap.add_argument("--batch-wait-ms", type=int, default=None,
                    help="sink.batch_wait_ms for this run (default: the config's default)")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds to wait for every Task after the last webhook")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="ff-bench-sfc-"))
    stack = LocalStack(state_dir=state, ports=Ports(
        kafka=free_port(), controller=free_port(), registry=free_port(),
        salesforce=free_port(), receiver=free_port()), persist=False)
    try:
        say(f"state in {state}; starting Kafka, registry, Salesforce emulator")
        stack.start_infra()
        stack.start_salesforce()
        stack.write_config()
        batch_wait_ms = set_batch_wait(stack, args.batch_wait_ms)
        batch_size = stack.settings().sink.batch_size
        stack.frontforce("setup")
        known = people(args.contacts, seed=23)
        assert stack.ca_file is not None
        seed_salesforce(stack.salesforce_url, str(stack.ca_file), known)
        admin = httpx.Client(base_url=stack.salesforce_url, timeout=120,
                             verify=ssl.create_default_context(cafile=str(stack.ca_file)))
        # The sink may use half of the daily allocation (15,000 here) before it pauses:
        # make room for a large naive run, so that no pause stands in the way.
        if 2 * args.naive + 1000 > 7000:
            admin.post("/__admin/config", json={"daily_limit": 4 * args.naive + 20000}
                       ).raise_for_status()
        stack.frontforce("load", "salesforce")

        naive_result: dict[str, Any] = {"messages": 0}
        if args.naive:
            say(f"naive pattern: {args.naive} messages, lookup then create")
            t_naive = time.time()
            naive_result = naive(stack, known, args.naive)
            time.sleep(0.2)
            seen = admin.get("/__admin/requests", params={"since": t_naive}).json()
            naive_result.update({
                "api_requests": seen["total"],
                "calls_per_message": round(seen["total"] / args.naive, 4),
                "by_kind": kinds(seen), "by_status": seen["by_status"]})
            say(f"naive: {json.dumps(naive_result)}")

        t_pipe = time.time()
        stats_before = admin.get("/__admin/stats").json()
        say(f"starting receiver, worker, sink (sink.batch_wait_ms={batch_wait_ms})")
        start_pipeline(stack)
        groups = {stack.app_id: stack.worker_groups[stack.app_id][:2]}
        assert wait_settled(stack.bootstrap, groups, 120)
        say(f"sending {args.messages} webhooks at {args.rate:g}/s, "
            f"{args.concurrency} senders")
        senders = Senders(stack, known, args.messages, args.rate, args.concurrency,
                          args.unknown_share)
        first, last = senders.run()
        send_s = last - first
        say(f"sent in {send_s:.1f} s ({len(senders.accepted)} accepted, "
            f"{senders.failed} failed); waiting for every Task")
        expected = set(senders.accepted)
        deadline = time.monotonic() + args.timeout
        written: dict[str, str] = {}
        while time.monotonic() < deadline:
            if wait_settled(stack.bootstrap, stack.worker_groups,
                            max(1.0, deadline - time.monotonic())):
                tasks = admin.get("/__admin/records/Task").json()["records"]
                written = {t["Front_Message_Id__c"]: t["CreatedDate"] for t in tasks
                           if str(t.get("Front_Message_Id__c") or "").startswith(RUN)}
                if expected <= set(written):
                    break
                say(f"settled but {len(expected - set(written))} Tasks missing; waiting")
                time.sleep(2)
        t_done = time.time()
        for name, proc in stack.procs.items():
            if proc.poll() is not None:
                say(f"{name} exited with {proc.returncode}")
        if not expected <= set(written):
            say(f"lag: {describe_lag(stack.bootstrap, stack.worker_groups)}")
        seen = admin.get("/__admin/requests", params={"since": t_pipe}).json()
        stats_after = admin.get("/__admin/stats").json()
        by_kind = kinds(seen)
        logged = len(expected & set(written))
        created = {m: datetime.strptime(written[m], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
                   for m in expected & set(written)}
        e2e = [(created[m] - senders.accepted[m]) * 1000 for m in created]
        # One collections create (alone, or a subrequest of a /composite call) is one
        # emulator transaction: its Tasks share CreatedDate.
        per_call: dict[str, int] = {}
        for m in expected & set(written):
            per_call[written[m]] = per_call.get(written[m], 0) + 1
        sizes = sorted(per_call.values())
        commanded = command_times(stack)
        to_cmd = [(commanded[m] - senders.accepted[m]) * 1000 for m in created if m in commanded]
        to_task = [(created[m] - commanded[m]) * 1000 for m in created if m in commanded]
        # Write calls: sObject Collections requests sent alone and /composite calls.
        composite = sum(n for k, n in by_kind.items() if k.startswith("composite"))
        billed = stats_after["api_calls"] - stats_before["api_calls"]
        leads = sum(1 for row in admin.get("/__admin/records/Lead").json()["records"]
                    if row.get("Email") in senders.strangers)
        lat = senders.latency_ms
        print(json.dumps({
            "sink": {
                "batch_wait_ms": batch_wait_ms, "batch_size": batch_size,
                "messages_sent": args.messages, "webhooks_accepted": len(senders.accepted),
                "webhooks_failed": senders.failed, "tasks_written": logged,
                "target_rate": args.rate, "concurrency": args.concurrency,
                "achieved_rate": round(len(senders.accepted) / send_s, 1),
                "send_late_ms_p99": pct(senders.late_ms, 0.99),
                "receiver_ms_p50": pct(lat, 0.5), "receiver_ms_p99": pct(lat, 0.99),
                "unknown_senders": len(senders.strangers),
                "leads_written": leads,
                "api_requests": seen["total"],
                "calls_per_logged_message": round(seen["total"] / max(logged, 1), 5),
                "composite_calls_per_logged_message": round(composite / max(logged, 1), 5),
                "records_per_composite_call": round(logged / max(composite, 1), 1),
                "records_incl_leads_per_write_call": round((logged + leads) / max(composite, 1), 1),
                "batch_size_min_p50_max": ([sizes[0], sizes[len(sizes) // 2], sizes[-1]]
                                           if sizes else None),
                "by_kind": by_kind, "by_status": seen["by_status"],
                "billed_api_calls_emulator_stats": billed,
                "logins_emulator_stats": (stats_after["token_requests"]
                                          - stats_before["token_requests"]),
                "e2e_ms_p50": pct(e2e, 0.5) if e2e else None,
                "e2e_ms_p99": pct(e2e, 0.99) if e2e else None,
                "e2e_ms_max": round(max(e2e), 1) if e2e else None,
                "e2e_ms_mean": round(statistics.fmean(e2e), 1) if e2e else None,
                # accepted -> command built by the worker; command built -> Task written
                "worker_ms_p50": pct(to_cmd, 0.5) if to_cmd else None,
                "worker_ms_p99": pct(to_cmd, 0.99) if to_cmd else None,
                "sink_ms_p50": pct(to_task, 0.5) if to_task else None,
                "sink_ms_p99": pct(to_task, 0.99) if to_task else None,
                "first_webhook_to_last_task_s": (round(max(created.values())
                                                       - senders.t0_epoch, 1)
                                                 if created else None),
                "first_webhook_to_settled_s": round(t_done - senders.t0_epoch, 1),
            },
            "naive": naive_result,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }))
    finally:
        stack.stop_all()


if __name__ == "__main__":
    main()
