"""Stream worker throughput: Front events through matching to commands, one worker, beside
the ceiling of plain confluent-kafka consuming and producing the same records in the same run.

    .venv/bin/python bench/worker_throughput.py --events 20000 --contacts 2000

Starts its own broker and registry (free ports, throw-away state), produces ``contacts``
Contact changes to ``salesforce.changes`` and lets one worker index them, then produces
``events`` inbound-message events (every sender a known Contact) straight to
``front.events`` and measures the time until all ``events`` commands are on
``commands.salesforce``. The ceiling: a confluent-kafka consumer reading the same
``front.events`` records and producing each one to another topic (no decode, no matching),
timed the same way, three times after the worker (the median is the ceiling; its rate swings
more than the worker's between runs). Prints one JSON line; BENCHMARKS.md records runs with their command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from frontforce.config import load_settings
from frontforce.kafka import ensure_topics
from frontforce.localstack import REPO, LocalStack, Ports, free_port
from frontforce.serialization import Serde


def end_offsets(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4()}"})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions)
    finally:
        c.close()


def wait_for(bootstrap: str, topic: str, count: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if end_offsets(bootstrap, topic) >= count:
            return time.monotonic()
        time.sleep(0.2)
    raise TimeoutError(f"{topic}: fewer than {count} records after {timeout_s} s")


def message_event(ident: str, email: str, now_ms: int) -> dict[str, Any]:
    """An inbound email from ``email`` as the receiver puts it on ``front.events``: event
    ``evt_<ident>`` in conversation ``cnv_<ident>``."""
    return {
        "event_id": f"evt_{ident}", "event_type": "INBOUND_MESSAGE", "front_type": "inbound",
        "occurred_at": now_ms, "received_at": now_ms, "source": "APP_WEBHOOK",
        "conversation_id": f"cnv_{ident}", "inbox_ids": ["inb_1"],
        "message": {"id": f"msg_{ident}", "channel_type": "email", "is_inbound": True,
                    "created_at": now_ms, "subject": "s", "text": "t", "author_email": None,
                    "recipients": [{"handle": email, "role": "from", "name": None}]},
    }


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all",
                  "partitioner": "murmur2_random"})
    for key, value in records:
        while True:
            try:
                p.produce(topic, key=key, value=value)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0


def raw_ceiling(bootstrap: str, source: str, n: int) -> float:
    sink = f"ceiling-{uuid.uuid4().hex[:6]}"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ceiling-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                  "enable.idempotence": True})
    c.subscribe([source])
    seen = 0
    started: float | None = None
    while seen < n:
        for m in c.consume(500, timeout=1.0):
            if m.error():
                continue
            started = started or time.monotonic()
            while True:
                try:
                    p.produce(sink, key=m.key(), value=m.value())
                    break
                except BufferError:
                    p.poll(0.05)
            seen += 1
        p.poll(0)
        c.commit(asynchronous=True)
    p.flush(60)
    elapsed = time.monotonic() - (started or time.monotonic())
    c.close()
    return n / elapsed


STATS_WAIT_S = 11.0
RAW_RUNS = 3


def stop_workers(workers: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    """SIGTERM every worker, then wait for each (SIGKILL one that does not stop in time)."""
    for w in workers:
        w.terminate()
    for w in workers:
        try:
            w.wait(timeout_s)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait(10)


def wait_members(bootstrap: str, group: str, n: int, timeout_s: float) -> None:
    """Until the fast lanes' group is Stable with ``n`` members, each owning partitions."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
            owned = [m for m in desc.members if m.assignment and m.assignment.topic_partitions]
            if str(desc.state).endswith("STABLE") and len(owned) == n:
                return
        except KafkaException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"group {group}: not {n} members with partitions after {timeout_s} s")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lane_stats(log_path: Path) -> dict[str, Any]:
    """The worker's last "fast lane" stats line (structlog key=value or JSON)."""
    found: dict[str, Any] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if "fast lane" not in line or "cpu_us_per_event" not in line:
            continue
        try:
            found = json.loads(line[line.index("{"):])
        except ValueError:
            found = {k: float(v) for k, v in (kv.split("=", 1) for kv in line.split()
                                                if "=" in kv and kv.split("=")[0] in
                                                ("events", "cpu_s", "cpu_us_per_event"))}
    return found


def print_profile(path: Path, top: int = 25) -> None:
    """Self and total samples per function from py-spy's raw (collapsed stacks) output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
                  for f in stack.split(";")]
        count = int(n)
        samples += count
        own[frames[-1]] += count
        for f in set(frames):
            total[f] += count
    print(f"profile: {samples} samples", file=sys.stderr)
    for name, n in own.most_common(top):
        print(f"  self {100 * n / samples:5.1f}%  total {100 * total[name] / samples:5.1f}%  {name}",
              file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--contacts", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes in one group (scale-out); each its own state dir")
    ap.add_argument("--partitions", type=int, default=3,
                    help="partitions of the topics frontforce creates (kafka.partitions)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="py-spy raw profile of the worker during the drain (py-spy on PATH or "
                         "PY_SPY); the functions with the most samples are printed")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on the way out
    state = Path(tempfile.mkdtemp(prefix="ff-bench-worker-"))
    stack = LocalStack(state_dir=state, ports=Ports(kafka=free_port(), controller=free_port(),
                                                    registry=free_port()), persist=False)
    stack.start_infra()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        configs = []
        for n in range(args.workers):
            config = state / f"frontforce-{n}.yaml"
            config.write_text(f"""
kafka: {{bootstrap_servers: "{stack.bootstrap}", schema_registry_url: "{stack.registry_url}",
        partitions: {args.partitions}}}
front: {{app_secret: "unused"}}
salesforce: {{login_url: "https://127.0.0.1:1", client_id: "unused", client_secret: "unused"}}
worker: {{app_id: "bench", data_dir: "{state / f'worker-{n}'}"}}
""")
            configs.append(config)
        s = load_settings(configs[0])
        ensure_topics(s)
        serde = Serde(s)
        now = int(time.time() * 1000)
        contacts = [(f"003B{i:014d}", f"person{i}@bench.example") for i in range(args.contacts)]
        produce(stack.bootstrap, s.topics.salesforce_changes, [
            (cid.encode(), serde.encode(s.topics.salesforce_changes, {
                "record_id": cid, "sobject": "Contact", "change_type": "SNAPSHOT",
                "commit_timestamp": now, "email": email, "account_id": None}))
            for cid, email in contacts])
        for n, config in enumerate(configs):
            log = (state / f"worker-{n}.log").open("ab")
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "frontforce", "worker", "--config", str(config)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=stack.env()))
        wait_for(stack.bootstrap, s.worker_topics["match_keys"], args.contacts, 180)
        time.sleep(5)  # the index agent drains match-keys into the table
        wait_members(stack.bootstrap, s.fast_lane_group, args.workers, 180)
        events: list[tuple[bytes, bytes]] = []
        for i in range(args.events):
            _, email = contacts[i % len(contacts)]
            events.append((f"cnv_b{i}".encode(),
                           serde.encode(s.topics.front_events, message_event(f"b{i}", email, now))))
        spy = None
        if args.profile:
            exe = os.environ.get("PY_SPY") or shutil.which("py-spy") or "py-spy"
            spy = subprocess.Popen([exe, "record", "-p", str(workers[0].pid), "--format", "raw",
                                    "-r", "100", "--nonblocking", "-o", str(args.profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        cpu_before = sum(proc_cpu_s(w.pid) for w in workers)
        start = time.monotonic()
        produce(stack.bootstrap, s.topics.front_events, events)
        produced = time.monotonic()
        done = wait_for(stack.bootstrap, s.topics.commands_salesforce, args.events, 1800)
        worker_rate = args.events / (done - start)
        worker_cpu_us = 1e6 * (sum(proc_cpu_s(w.pid) for w in workers) - cpu_before) / args.events
        time.sleep(STATS_WAIT_S)  # the lane's next stats line
        lanes = [lane_stats(state / f"worker-{n}.log") for n in range(args.workers)]
        lane_cpu = sum(x.get("cpu_s", 0.0) for x in lanes)
        lane_events = sum(x.get("events", 0) for x in lanes)
        lane = {"cpu_us_per_event": round(1e6 * lane_cpu / lane_events, 1)} if lane_events else {}
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
            print_profile(args.profile)
        # The raw client's rate moved threefold between two runs of one minute (146,008 and
        # 436,855/s, BENCHMARKS.md): the median of RAW_RUNS runs, each one printed.
        cpu0 = time.process_time()
        ceilings = [raw_ceiling(stack.bootstrap, s.topics.front_events, args.events)
                    for _ in range(RAW_RUNS)]
        raw_cpu_us = 1e6 * (time.process_time() - cpu0) / (args.events * RAW_RUNS)
        ceiling = statistics.median(ceilings)
        print(json.dumps({
            "events": args.events, "contacts": args.contacts, "workers": args.workers,
            "partitions": args.partitions,
            "produce_s": round(produced - start, 1),
            "worker_events_per_s": round(worker_rate, 1),
            "raw_client_events_per_s": round(ceiling, 1),
            "raw_client_runs": [round(c) for c in ceilings],
            "worker_share_of_ceiling": round(worker_rate / ceiling, 3),
            # CPU time per event, which the machine's other load does not change (much): the
            # fast lane's thread, and the raw client's whole process in the same run.
            "worker_process_cpu_us_per_event": round(worker_cpu_us, 1),
            "lane_cpu_us_per_event": lane.get("cpu_us_per_event"),
            "raw_client_cpu_us_per_event": round(raw_cpu_us, 1),
            "lane_events_per_cpu_s": round(1e6 / lane["cpu_us_per_event"]) if lane.get("cpu_us_per_event") else None,
        }), flush=True)
    finally:
        stop_workers(workers)
        stack.stop_all()


if __name__ == "__main__":
    main()
