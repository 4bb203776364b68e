"""What the Front sink's coalescing saves: Front API calls for a burst of commands.

    .venv/bin/python bench/front_sink_coalescing.py --commands 1000 --conversations 50 --contacts 50

Starts its own Kafka + registry (free ports, throw-away state) and the Front emulator, seeds
the conversations and contacts, produces the burst onto commands.front (a mix: comments,
tags added and removed, assignments, links on conversations; custom field updates on
contacts), runs the Front sink until every command is audited and committed, and counts the
calls at the emulator (GET /__admin/requests). Prints one JSON line: calls per command, and
per conversation / contact per flush window (writes; reads for the merge, the tag cache and
tag creation counted apart). BENCHMARKS.md records runs with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Producer

from frontforce.config import load_settings
from frontforce.contracts import Contracts
from frontforce.kafka import ensure_topics
from frontforce.localstack import LocalStack, Ports, free_port
from frontforce.serialization import Serde
from sinks.front import FrontSink

TAGS = [f"sf:stage-{n}" for n in range(8)]
TEAM = ["pam@acme.example", "jim@acme.example"]


# What each mix puts on conversations: every operation the sink has, or only what synced
# Salesforce changes produce (a Case status change is a comment; Account/Contact context goes
# to the contacts' custom fields).
MIXES = {"all": ["AddComment", "AddTags", "AddTags", "RemoveTags", "AssignConversation", "AddLink"],
         "salesforce-changes": ["AddComment"]}


def commands(n: int, convs: list[str], contacts: list[str], rng: random.Random,
             mix: str = "all") -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        if i % 2 == 0:
            cid = convs[(i // 2) % len(convs)]
            kind = rng.choice(MIXES[mix])
            op: dict[str, Any] = {"conversation_id": cid}
            if kind == "AddComment":
                op.update(body=f"Salesforce update {i}", author_email=None)
            elif kind in ("AddTags", "RemoveTags"):
                op.update(tag_names=rng.sample(TAGS, 2))
            elif kind == "AssignConversation":
                op.update(teammate_email=rng.choice(TEAM))
            else:
                op.update(name="Opportunity", external_url=f"https://acme.my.salesforce.com/006{rng.randrange(3)}{cid}")
        else:
            kind = "UpdateContactFields"
            op = {"contact_handle": contacts[(i // 2) % len(contacts)], "links": [],
                  "custom_fields": {"Tier": rng.choice(["Gold", "Silver"]), "ARR": str(rng.randrange(1000, 99000))}}
        out.append({"command_id": f"bench-{i}", "idempotency_key": f"bench-{i}",
                    "created_at": int(time.time() * 1000),
                    "origin": {"system": "frontforce", "source_event_id": f"evt-{i}", "correlation_id": f"c-{i}"},
                    "operation": (f"frontforce.commands.front.{kind}", op)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commands", type=int, default=1000)
    ap.add_argument("--conversations", type=int, default=50)
    ap.add_argument("--contacts", type=int, default=50)
    ap.add_argument("--flush-window-ms", type=int, default=2000)
    ap.add_argument("--rpm", type=int, default=1000, help="emulated company budget (Front: 50-200)")
    ap.add_argument("--mix", choices=sorted(MIXES), default="all",
                    help="all: every operation; salesforce-changes: comments and contact fields only")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="ff-bench-front-"))
    stack = LocalStack(state_dir=state, ports=Ports(kafka=free_port(), controller=free_port(),
                                                    registry=free_port(), front=free_port()), persist=False)
    try:
        stack.start_infra()
        stack.start_front()
        admin = httpx.Client(base_url=stack.front_url, timeout=60)
        admin.post("/__admin/config", json={"rpm": args.rpm}).raise_for_status()
        ids = admin.post("/__admin/seed", json={
            "defaults": True,
            "custom_fields": {"contact": [{"name": "Tier", "type": "string"}, {"name": "ARR", "type": "number"},
                                          {"name": "Owner Note", "type": "string"}]},
            "tags": [{"name": t} for t in TAGS],
            "contacts": [{"handles": [{"handle": f"p{i}@corp.example", "source": "email"}],
                          "custom_fields": {"Owner Note": "set by a teammate"}} for i in range(args.contacts)],
            "conversations": [{"subject": f"c{i}"} for i in range(args.conversations)]}).json()["ids"]
        config = state / "frontforce.yaml"
        config.write_text(f"""
kafka: {{bootstrap_servers: "{stack.bootstrap}", schema_registry_url: "{stack.registry_url}"}}
front: {{app_secret: "unused", api_url: "{stack.front_url}", api_token: "{stack.front_token}"}}
salesforce: {{login_url: "https://127.0.0.1:1", client_id: "unused", client_secret: "unused"}}
front_sink: {{flush_window_ms: {args.flush_window_ms}, batch_size: {args.commands}}}
""")
        settings = load_settings(config)
        ensure_topics(settings)
        Contracts(settings).register()
        serde = Serde(settings)
        cmds = commands(args.commands, ids["conversations"], [f"p{i}@corp.example" for i in range(args.contacts)],
                        random.Random(7), args.mix)
        producer = Producer({"bootstrap.servers": stack.bootstrap})
        for c in cmds:
            op = c["operation"][1]
            key = (op.get("conversation_id") or op["contact_handle"]).encode()
            producer.produce(settings.topics.commands_front, key=key,
                             value=serde.encode(settings.topics.commands_front, c))
        assert producer.flush(30) == 0
        admin.delete("/__admin/requests").raise_for_status()
        sink = FrontSink(settings)
        thread = threading.Thread(target=sink.run, daemon=True)
        t0 = time.monotonic()
        thread.start()
        while sum(sink.stats[k] for k in ("applied", "skipped", "dead_lettered")) < len(cmds):
            time.sleep(0.2)
            if time.monotonic() - t0 > 900:
                raise SystemExit(f"not done after 900 s: {sink.stats}")
        elapsed = time.monotonic() - t0
        sink.stop_event.set()
        thread.join(30)
        reqs = admin.get("/__admin/requests").json()["requests"]
        writes = [r for r in reqs if r["method"] != "GET" and r["status"] < 400]
        by_target: dict[str, Counter[str]] = defaultdict(Counter)
        for r in writes:
            parts = r["path"].split("/")
            if parts[1] in ("conversations", "contacts"):
                by_target[f"{parts[1]}/{parts[2]}"][f"{r['method']} /{parts[1]}/…/{'/'.join(parts[3:])}"] += 1
        conv_w = [sum(c.values()) for t, c in by_target.items() if t.startswith("conversations/")]
        cont_w = [sum(c.values()) for t, c in by_target.items() if t.startswith("contacts/")]
        kinds: Counter[str] = Counter()
        for c in by_target.values():
            kinds.update(c)
        per_kind_max = max((n for c in by_target.values() for n in c.values()), default=0)
        reads = Counter(("GET " + ("/conversations/{id}" if r["path"].startswith("/conversations/")
                                    else "/contacts/{alias}" if r["path"].startswith("/contacts/alt")
                                    else r["path"])) for r in reqs if r["method"] == "GET")
        other_writes = Counter(f"{r['method']} {r['path']}" for r in writes
                               if r["path"].split("/")[1] not in ("conversations", "contacts"))
        op_mix = Counter(c["operation"][0].rsplit(".", 1)[-1] for c in cmds)
        print(json.dumps({
            "commands": len(cmds), "op_mix": dict(op_mix), "conversations": args.conversations,
            "contacts": args.contacts, "flush_window_ms": args.flush_window_ms, "rpm": args.rpm,
            "mix": args.mix,
            "flush_windows": sink.stats["batches"], "seconds": round(elapsed, 1),
            "front_calls": len(reqs), "calls_per_command": round(len(reqs) / len(cmds), 3),
            "writes": len(writes), "writes_per_command": round(len(writes) / len(cmds), 3),
            "status_429": sum(r["status"] == 429 for r in reqs),
            "writes_per_conversation_per_window": {"max": max(conv_w, default=0),
                                                   "mean": round(sum(conv_w) / max(len(conv_w), 1), 2)},
            "writes_per_contact_per_window": {"max": max(cont_w, default=0),
                                              "mean": round(sum(cont_w) / max(len(cont_w), 1), 2)},
            "max_calls_per_target_per_endpoint_per_window": per_kind_max,
            "writes_by_endpoint": dict(kinds), "reads": dict(reads), "other_writes": dict(other_writes),
            "sink": sink.stats,
        }))
    finally:
        stack.stop_all()


if __name__ == "__main__":
    main()
