"""Memory and restore time of a stream worker whose match tables hold a million Contacts.

    .venv/bin/python bench/worker_memory.py --contacts 1000000

Starts its own broker and registry (free ports, throw-away state). The tables' contents are
what the worker itself computes (``record_update`` and ``merge_entry``, the functions its
index agents run) for ``contacts`` Contacts (an email and a phone each), a quarter as many
Leads and a tenth as many Accounts (a web domain each), written straight to the tables'
changelog topics in the tables' own Avro codec: indexing a million records through the
agents would take the better part of an hour here and is not what this measures.

To be sure the records are the ones the worker writes, a first worker indexes a small
sample through the real path (``salesforce.changes`` -> agents -> changelogs) and the bench
checks that its changelog records for that sample equal, byte for byte, the ones it makes
itself. Then a fresh worker (empty state directory) starts: the time until its fast lane
reports ready (every table restored) and its resident size then, and once more after a
message from the last Contact was matched (the tables read, not only loaded).

Prints one JSON line; BENCHMARKS.md records runs with their command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from frontforce.config import load_settings
from frontforce.kafka import ensure_topics
from frontforce.localstack import REPO, LocalStack, Ports, free_port
from frontforce.serialization import Serde
from streams._matching import FREE_MAIL, is_reference_key, merge_entry, record_update

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_throughput import end_offsets, produce, stop_workers, wait_for  # noqa: E402

SAMPLE = 50


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def changes(contacts: int, now: int) -> list[dict[str, Any]]:
    """SNAPSHOT changes of ``contacts`` Contacts, contacts/4 Leads, contacts/10 Accounts."""
    out: list[dict[str, Any]] = []
    accounts = max(1, contacts // 10)
    for i in range(accounts):
        out.append({"record_id": f"001M{i:014d}", "sobject": "Account", "change_type": "SNAPSHOT",
                    "commit_timestamp": now, "name": f"Company {i}",
                    "website": f"https://www.company{i}.example", "owner_id": "005M00000000000001"})
    for i in range(contacts):
        out.append({"record_id": f"003M{i:014d}", "sobject": "Contact", "change_type": "SNAPSHOT",
                    "commit_timestamp": now, "email": f"person{i}@company{i % accounts}.example",
                    "phone": f"+1 (415) {i // 10000 % 1000:03d}-{i % 10000:04d}",
                    "first_name": "Pat", "last_name": f"Person{i}",
                    "account_id": f"001M{i % accounts:014d}", "owner_id": "005M00000000000001"})
    for i in range(contacts // 4):
        out.append({"record_id": f"00QM{i:014d}", "sobject": "Lead", "change_type": "SNAPSHOT",
                    "commit_timestamp": now, "email": f"lead{i}@prospect{i}.example",
                    "company": f"Prospect {i}", "last_name": f"Lead{i}", "status": "Open"})
    return out


def table_records(chs: list[dict[str, Any]], serde: Serde, tables: dict[str, str]
                  ) -> dict[str, dict[bytes, bytes]]:
    """What the worker's index agents would leave in each changelog topic for ``chs``."""
    records: dict[str, dict[str, Any]] = {}
    match: dict[str, dict[str, Any]] = {}
    ref: dict[str, dict[str, Any]] = {}
    topic = tables["changes"]
    for ch in chs:
        # As the index agent sees it: decoded from what the source writes.
        full = serde.decode(topic, serde.encode(topic, ch))
        state, entries = record_update(records.get(ch["record_id"]), full, "US", FREE_MAIL)
        if state is not None:
            records[ch["record_id"]] = state
        for key, entry in entries:
            into = ref if is_reference_key(key) else match
            held = into.get(key)
            into[key] = {"candidates": merge_entry(held and held["candidates"], entry)}
    # Faust writes a table's str keys as JSON strings.
    return {t: {json.dumps(k).encode(): serde.encode(t, v) for k, v in held.items()}
            for t, held in ((tables["record_table"], records), (tables["match_table"], match),
                            (tables["reference_table"], ref))}


def read_topic(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    """The newest value per key of a (compacted) topic."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        out: dict[bytes, bytes] = {}
        left = {p for p, e in ends.items() if e > 0}
        while left:
            for m in c.consume(500, timeout=1.0):
                if m.error():
                    continue
                out[m.key() or b""] = m.value() or b""
                if (m.offset() or 0) + 1 >= ends[m.partition() or 0]:
                    left.discard(m.partition() or 0)
        return out
    finally:
        c.close()


def strip_time(serde: Serde, topic: str, data: bytes) -> Any:
    return serde.decode(topic, data, plain=True)


def wait_log(path: Path, text: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return time.monotonic()
        time.sleep(0.2)
    raise TimeoutError(f"{path.name}: no {text!r} after {timeout_s} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=1_000_000)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on the way out
    state = Path(tempfile.mkdtemp(prefix="ff-bench-memory-"))
    stack = LocalStack(state_dir=state, ports=Ports(kafka=free_port(), controller=free_port(),
                                                    registry=free_port()), persist=False)
    stack.start_infra()
    worker: subprocess.Popen[bytes] | None = None
    try:
        config = state / "frontforce.yaml"
        config.write_text(f"""
kafka: {{bootstrap_servers: "{stack.bootstrap}", schema_registry_url: "{stack.registry_url}"}}
front: {{app_secret: "unused"}}
salesforce: {{login_url: "https://127.0.0.1:1", client_id: "unused", client_secret: "unused"}}
worker: {{app_id: "bench", data_dir: "{state / 'worker'}"}}
""")
        s = load_settings(config)
        ensure_topics(s)
        serde = Serde(s)
        tables = {**s.worker_table_topics, "changes": s.topics.salesforce_changes}
        now = int(time.time() * 1000)

        def start(name: str) -> tuple[subprocess.Popen[bytes], Path]:
            log_path = state / f"{name}.log"
            proc = subprocess.Popen([sys.executable, "-m", "frontforce", "worker", "--config", str(config)],
                                    cwd=REPO, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
                                    env=stack.env())
            return proc, log_path

        # 1. The real path for a sample: the worker's own changelog records.
        sample = changes(SAMPLE, now)
        worker, log_path = start("sample")
        produce(stack.bootstrap, s.topics.salesforce_changes,
                [(ch["record_id"].encode(), serde.encode(s.topics.salesforce_changes, ch)) for ch in sample])
        expected = table_records(sample, serde, tables)
        deadline = time.monotonic() + 180
        while True:
            got = {t: read_topic(stack.bootstrap, t) for t in expected}
            if all(len(got[t]) >= len(v) for t, v in expected.items()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        for t, want in expected.items():
            assert set(got[t]) == set(want), (
                f"{t}: keys differ from the worker's: {sorted(set(got[t]) ^ set(want))[:6]}")
            for k, v in want.items():
                assert strip_time(serde, t, got[t][k]) == strip_time(serde, t, v), f"{t}[{k!r}] differs"
        stop_workers([worker])
        worker = None
        print(f"sample of {SAMPLE}: the bench's table records equal the worker's", file=sys.stderr)

        # 2. The million, straight to the changelogs (the sample's keys included, overwritten).
        t0 = time.monotonic()
        big = table_records(changes(args.contacts, now), serde, tables)
        built = time.monotonic() - t0
        p = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 50, "acks": "all",
                      "partitioner": "murmur2_random", "compression.type": "lz4"})
        sizes = {}
        for topic, recs in big.items():
            sizes[topic] = len(recs)
            for k, v in recs.items():
                while True:
                    try:
                        p.produce(topic, key=k, value=v)
                        break
                    except BufferError:
                        p.poll(0.1)
        assert p.flush(300) == 0
        changelog_records = sum(end_offsets(stack.bootstrap, t) for t in big)
        print(f"tables built in {built:.0f} s: {sizes}", file=sys.stderr)

        # 3. A fresh worker restores them.
        shutil.rmtree(state / "worker", ignore_errors=True)
        t1 = time.monotonic()
        worker, log_path = start("fresh")
        ready = wait_log(log_path, "fast lane started", 3600)
        restore_s = ready - t1
        time.sleep(5)
        rss_restored = rss_mb(worker.pid)
        last = args.contacts - 1
        ev = {"event_id": "evt_mem", "event_type": "INBOUND_MESSAGE", "front_type": "inbound",
              "occurred_at": now, "received_at": now, "source": "APP_WEBHOOK", "conversation_id": "cnv_mem",
              "inbox_ids": ["inb_1"],
              "message": {"id": "msg_mem", "channel_type": "email", "is_inbound": True, "created_at": now,
                          "subject": "s", "text": "t", "author_email": None,
                          "recipients": [{"handle": f"person{last}@company{last % max(1, args.contacts // 10)}.example",
                                          "role": "from", "name": None}]}}
        before = end_offsets(stack.bootstrap, s.topics.commands_salesforce)
        produce(stack.bootstrap, s.topics.front_events, [(b"cnv_mem", serde.encode(s.topics.front_events, ev))])
        wait_for(stack.bootstrap, s.topics.commands_salesforce, before + 1, 120)
        rss_matched = rss_mb(worker.pid)
        data_mb = sum(f.stat().st_size for f in (state / "worker").rglob("*") if f.is_file()) / 2**20
        print(json.dumps({
            "contacts": args.contacts, "leads": args.contacts // 4, "accounts": max(1, args.contacts // 10),
            "table_keys": sizes, "changelog_records": changelog_records,
            "restore_s": round(restore_s, 1), "rss_mb_restored": round(rss_restored),
            "rss_mb_after_a_match": round(rss_matched), "rocksdb_mb_on_disk": round(data_mb),
        }), flush=True)
    finally:
        if worker is not None:
            stop_workers([worker])
        stack.stop_all()


if __name__ == "__main__":
    main()
