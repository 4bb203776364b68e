"""How much of Front's rate limit a backfill uses, and how many 429s it draws.

    .venv/bin/python bench/front_backfill.py --rpm 50 --rpm 100 --windows 3

Starts its own broker and registry (free ports, throw-away state) and the Front emulator with
Front's real 60-second windows, seeds ``windows × rpm`` pages of events (15 a page), then runs
``frontforce``'s backfill (the same code as ``frontforce backfill front``) against it and
records when each Events API request went out. Reported per plan:

- ``steady_rpm``: requests per minute over the complete windows (first request up to the
  first request of the last window), the figure to compare with the plan's rpm;
- ``share_of_allowed``: requests made / (plan rpm × windows the run touched);
- ``throttled``: 429 answers the backfill received.
Prints one JSON line per plan; BENCHMARKS.md records runs with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from emulators.front import DEFAULT_TOKEN
from frontforce.config import load_settings
from frontforce.front import FrontClient, FrontPacer
from frontforce.kafka import ensure_topics
from frontforce.localstack import LocalStack, Ports, free_port
from sources.front import backfill


def run(stack: LocalStack, rpm: int, windows: int, prefix: str) -> dict[str, Any]:
    admin = httpx.Client(base_url=stack.front_url, timeout=60)
    admin.post("/__admin/reset").raise_for_status()
    admin.post("/__admin/config", json={"rpm": 10_000, "window_seconds": 60}).raise_for_status()
    pages = windows * rpm
    t0 = time.time() - 10 * 86400
    for i in range(pages * 15):
        admin.post("/__admin/simulate/inbound", json={
            "from": f"p{i % 97}@bench.example", "subject": f"s{i}", "at": t0 + i * 0.01,
        }).raise_for_status()
    admin.post("/__admin/config", json={"rpm": rpm, "window_seconds": 60}).raise_for_status()
    config = stack.state_dir / f"bench-{rpm}.yaml"
    config.write_text(f"""
kafka: {{bootstrap_servers: "{stack.bootstrap}", schema_registry_url: "{stack.registry_url}",
         topic_prefix: "{prefix}"}}
front: {{app_secret: "unused", api_url: "{stack.front_url}", api_token: "{DEFAULT_TOKEN}"}}
salesforce: {{login_url: "https://127.0.0.1:1", client_id: "unused", client_secret: "unused"}}
""")
    settings = load_settings(config)
    ensure_topics(settings)
    pacer = FrontPacer()
    sent: list[float] = []
    original = pacer.before_call

    def gate() -> None:
        original()
        sent.append(time.monotonic())

    pacer.before_call = gate  # type: ignore[method-assign]
    client = FrontClient(settings.front, pacer=pacer)
    started = time.monotonic()
    result = backfill(settings, t0 - 1, t0 + pages * 15 * 0.01 + 1, client=client)
    elapsed = time.monotonic() - started
    # Requests of complete windows: everything before the last window's first request.
    last_window_start = sent[0] + 60 * ((sent[-1] - sent[0]) // 60)
    full = [t for t in sent if t < last_window_start]
    span = last_window_start - sent[0]
    windows_touched = int((sent[-1] - sent[0]) // 60) + 1
    return {
        "rpm": rpm,
        "events": result.events,
        "pages": result.pages,
        "requests": len(sent),
        "elapsed_s": round(elapsed, 1),
        "steady_rpm": round(len(full) / span * 60, 1) if span > 0 else None,
        "share_of_allowed": round(len(sent) / (rpm * windows_touched), 3),
        "throttled": pacer.throttled,
        "waited_s": round(pacer.waited_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rpm", type=int, action="append", help="plan rpm (repeat)")
    ap.add_argument("--windows", type=int, default=3, help="60-second windows of pages to read")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="ff-bench-front-"))
    stack = LocalStack(state_dir=state, ports=Ports(
        kafka=free_port(), controller=free_port(), registry=free_port(), front=free_port()),
        persist=False)
    stack.start_infra()
    try:
        stack.start_front()
        for i, rpm in enumerate(args.rpm or [50, 100]):
            print(json.dumps(run(stack, rpm, args.windows, f"fb{i}.")), flush=True)
    finally:
        stack.stop_all()


if __name__ == "__main__":
    main()
