"""Throughput and cost of the walking-skeleton path, measured on this machine.

    .venv/bin/python bench/webhook_to_task.py --messages 1000 --senders 200 --known 160

Starts its own stack (free ports, throw-away state), seeds the Salesforce emulator, loads
the snapshot, starts receiver + worker + sink, sends signed webhooks one after another
(like Front does, per conversation) and measures:
  - receiver latency per webhook (2xx only after Kafka acked it): p50 / p99 / max;
  - webhooks accepted per second (single sender);
  - time from the first webhook to the last Task written;
  - Salesforce API calls spent by the sink per Task (sObject Collections batching);
  - resident memory of the three pipeline processes at the end.
Prints one JSON line; BENCHMARKS.md records runs with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from emulators.front import WebhookEmitter, inbound_email_event
from emulators.scenario import people, seed_salesforce
from frontforce.lag import wait_settled
from frontforce.localstack import LocalStack, Ports, free_port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=200)
    ap.add_argument("--known", type=int, default=160)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="ff-bench-"))
    stack = LocalStack(state_dir=state, ports=Ports(
        kafka=free_port(), controller=free_port(), registry=free_port(),
        salesforce=free_port(), receiver=free_port()), persist=False)
    try:
        stack.start_infra()
        stack.start_salesforce()
        stack.write_config()
        stack.frontforce("setup")
        everyone = people(args.senders, seed=11)
        known = everyone[: args.known]
        assert stack.ca_file is not None
        seed_salesforce(stack.salesforce_url, str(stack.ca_file), known)
        stack.frontforce("load", "salesforce")
        stack.start_pipeline()
        assert wait_settled(stack.bootstrap, {stack.app_id: stack.worker_groups[stack.app_id][:2]}, 120)
        admin = httpx.Client(base_url=stack.salesforce_url,
                             verify=ssl.create_default_context(cafile=str(stack.ca_file)))
        calls_before = admin.get("/__admin/stats").json()["api_calls"]
        emitter = WebhookEmitter(stack.receiver_url, stack.app_secret.encode())
        known_emails = {p.email for p in known}
        expected = 0
        latencies = []
        t0 = time.monotonic()
        for i in range(args.messages):
            person = everyone[i % len(everyone)]
            expected += person.email in known_emails
            ev = inbound_email_event(
                base_url="https://acme.api.frontapp.com", event_id=f"evt_b{i}",
                conversation_id=f"cnv_b{i % 300}", message_id=f"msg_b{i}", inbox_id="inb_1",
                sender=person.email, sender_name=None, to="support@acme.example",
                subject="Benchmark", text="x" * 400, emitted_at=time.time())
            s = time.monotonic()
            assert emitter.deliver(ev) == 200
            latencies.append((time.monotonic() - s) * 1000)
        t_sent = time.monotonic() - t0
        while True:
            tasks = admin.get("/__admin/records/Task").json()["totalSize"]
            if tasks >= expected or time.monotonic() - t0 > 600:
                break
            time.sleep(0.2)
        t_done = time.monotonic() - t0
        calls = admin.get("/__admin/stats").json()["api_calls"] - calls_before
        mem = {name: round(rss_mib(p.pid), 1) for name, p in stack.procs.items()}
        latencies.sort()
        print(json.dumps({
            "messages": args.messages, "tasks_expected": expected, "tasks_written": tasks,
            "receiver_ms_p50": round(statistics.median(latencies), 2),
            "receiver_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1], 2),
            "receiver_ms_max": round(latencies[-1], 2),
            "webhooks_per_s": round(args.messages / t_sent, 1),
            "first_webhook_to_last_task_s": round(t_done, 2),
            "salesforce_api_calls": calls,
            "api_calls_per_task": round(calls / max(tasks, 1), 4),
            "rss_mib": mem,
        }))
    finally:
        stack.stop_all()


if __name__ == "__main__":
    main()
