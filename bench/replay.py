"""Replay of ``front.events`` from the beginning: how long the pipeline takes to read it all
again, and how many new writes that makes at Salesforce (the goal: none).

    .venv/bin/python bench/replay.py --events 1000000 --contacts 1000

Starts its own broker, registry and Salesforce emulator (free ports, throw-away state),
seeds ``contacts`` Contacts in the emulator and puts them on ``salesforce.changes`` (as
the source's snapshot would), produces ``events`` inbound-message events (every sender a
known Contact) straight to ``front.events``, and runs the worker and the Salesforce sink
until each event's Task is in Salesforce (the first pass, timed too). Then, for each of
``--replays`` in turn (default: ``all``, every group, then ``worker``, the worker's
alone), it stops them, runs ``frontforce replay --from beginning``, starts them again and
times two moments: when ``replay`` reports the groups it moved have read their range again,
and when every group of the pipeline has settled (the sink has also read what the worker
sent again: the figure that counts). The new writes are the change events Salesforce
committed meanwhile (a replayed Task is refused by its external id, DUPLICATE_VALUE, and
writes nothing); with them the API calls the sink spent and the CPU seconds of each part.
Prints one JSON line; BENCHMARKS.md records runs with their command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from frontforce.kafka import ensure_topics
from frontforce.lag import describe_lag, wait_settled
from frontforce.localstack import REPO, LocalStack, Ports, free_port
from frontforce.serialization import Serde

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import cpu_by_role  # noqa: E402
from worker_throughput import message_event, produce  # noqa: E402


def org(stack: LocalStack) -> httpx.Client:
    assert stack.ca_file is not None
    return httpx.Client(base_url=stack.salesforce_url, verify=str(stack.ca_file), timeout=120)


def writes(sf: httpx.Client) -> dict[str, int]:
    cdc = sf.get("/__admin/cdc")
    cdc.raise_for_status()
    stats = sf.get("/__admin/stats")
    stats.raise_for_status()
    return {"change_events": int(cdc.json()["latest_replay_id"]),
            "api_calls": int(stats.json()["api_calls"])}


def replay_once(stack: LocalStack, state: Path, sf: httpx.Client, groups: dict[str, list[str]],
                mode: str, timeout: float) -> dict[str, object]:
    """Stop the worker and the sink, replay from the beginning (``mode`` "all": every group;
    else the ``--group`` it names), start them again; time until ``replay`` reports the moved
    groups have read their range again, and until every group has settled."""
    before = writes(sf)
    stack.stop_process("worker")
    stack.stop_process("sink-salesforce")
    cmd = [sys.executable, "-m", "frontforce", "replay", "--from", "beginning", "--timeout",
           str(timeout), "-c", str(state / "frontforce.yaml")]
    if mode != "all":
        cmd += ["--group", mode]
    replay = subprocess.Popen(cmd, env=stack.env(), cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(3)  # it has moved the groups and follows them
    cpu0 = cpu_by_role(os.getpid())  # the worker and the sink start from zero
    cpu0.pop("worker", None)
    cpu0.pop("sink", None)
    t1 = time.monotonic()
    stack.spawn("worker", "worker")
    stack.spawn("sink-salesforce", "sink", "salesforce")
    out, err = replay.communicate(timeout=timeout + 60)
    replay_s = time.monotonic() - t1
    if replay.returncode != 0:
        raise RuntimeError(f"replay exited {replay.returncode}: {err[-2000:]}")
    # Every group settled: the sink has also read what the worker sent again.
    assert wait_settled(stack.bootstrap, groups, 600, quiet_s=3.0), describe_lag(stack.bootstrap, groups)
    settled_s = time.monotonic() - t1 - 3.0
    cpu1 = cpu_by_role(os.getpid())
    # CPU seconds each part used from the start until every group settled (+ the 3 s quiet).
    cpu_s = {role: round(cpu1[role] - cpu0.get(role, 0.0), 1) for role in sorted(cpu1)
             if role != "sender"}
    time.sleep(5)
    after = writes(sf)
    reread = sum(int(n) for n in re.findall(r"(\d+) record\(s\) to re-read", out))
    return {"groups": mode, "records_reread": reread, "replay_s": round(replay_s, 1),
            "all_settled_s": round(settled_s, 1), "cpu_s": cpu_s,
            "new_writes": after["change_events"] - before["change_events"],
            "api_calls": after["api_calls"] - before["api_calls"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--contacts", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=7200, help="seconds each pass may take")
    ap.add_argument("--replays", nargs="+", default=["all", "worker"],
                    help="replays from the beginning, one after the other: 'all' moves every group"
                    " (the default of frontforce replay), 'worker' only the worker's (the sinks read"
                    " only what it sends again), or any --group value")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    state = Path(tempfile.mkdtemp(prefix="ff-bench-replay-"))
    stack = LocalStack(state_dir=state, ports=Ports(kafka=free_port(), controller=free_port(),
                                                    registry=free_port()), persist=False)
    stack.start_infra()
    try:
        stack.start_salesforce()
        stack.write_config()
        s = stack.settings()
        ensure_topics(s)
        serde = Serde(s)
        sf = org(stack)
        emails = [f"person{i}@bench.example" for i in range(args.contacts)]
        ids: list[str] = []
        for at in range(0, len(emails), 500):
            r = sf.post("/__admin/seed", json={"records": {"Contact": [
                {"LastName": f"Person {i}", "Email": e}
                for i, e in enumerate(emails[at:at + 500], start=at)]}})
            r.raise_for_status()
            ids.extend(r.json()["ids"]["Contact"])
        now = int(time.time() * 1000)
        produce(stack.bootstrap, s.topics.salesforce_changes, [
            (cid.encode(), serde.encode(s.topics.salesforce_changes, {
                "record_id": cid, "sobject": "Contact", "change_type": "SNAPSHOT",
                "commit_timestamp": now, "email": email, "account_id": None}))
            for cid, email in zip(ids, emails, strict=True)])
        chunk = 100_000
        for at in range(0, args.events, chunk):
            events: list[tuple[bytes, bytes]] = []
            for i in range(at, min(args.events, at + chunk)):
                ev = message_event(f"r{i}", emails[i % len(emails)], now)
                events.append((f"cnv_r{i}".encode(), serde.encode(s.topics.front_events, ev)))
            produce(stack.bootstrap, s.topics.front_events, events)
        groups = dict(stack.worker_groups)
        before = writes(sf)
        t0 = time.monotonic()
        stack.spawn("worker", "worker")
        stack.spawn("sink-salesforce", "sink", "salesforce")
        deadline = time.monotonic() + args.timeout
        while writes(sf)["change_events"] - before["change_events"] < args.events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"first pass: {writes(sf)} after {args.timeout} s")
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {stack.logs}")
            time.sleep(1)
        first_s = time.monotonic() - t0
        assert wait_settled(stack.bootstrap, groups, 600, quiet_s=3.0), describe_lag(stack.bootstrap, groups)
        first = writes(sf)
        result: dict[str, object] = {
            "events": args.events, "contacts": args.contacts,
            "first_pass_s": round(first_s, 1),
            "first_pass_tasks_written": first["change_events"] - before["change_events"],
            "first_pass_api_calls": first["api_calls"] - before["api_calls"],
        }
        for mode in args.replays:
            result[f"replay_{mode}"] = replay_once(stack, state, sf, groups, mode, args.timeout)
        print(json.dumps(result), flush=True)
    finally:
        stack.stop_all()


if __name__ == "__main__":
    main()
