"""The operator's commands as a user runs them (``frontforce replay|status|up|down``), on the
real broker, registry and emulators, asserting what the user sees and what reached the
emulators.

One pipeline for the module (receiver, worker, both sinks, the change subscription), fed
1,000 signed webhooks once; each test then stops the stages it replays, runs the command
as a subprocess, and starts them again, as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from frontforce.kafka import read_to_end
from frontforce.lag import describe_lag, wait_settled
from frontforce.localstack import REPO, LocalStack
from tests.test_pipeline import KNOWN, Pipeline, event, running_pipeline

FRONTFORCE = str(Path(sys.executable).parent / "frontforce")  # the console script
EVENTS = 1000
STAGES = ("worker", "sink-salesforce", "sink-front")
# The first test pays for the broker, registry, emulators and 1,000 events (a minute or two
# on a loaded 2-core machine).
pytestmark = pytest.mark.timeout(600)


def cli(stack: LocalStack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``frontforce ARGS -c <the stack's config>``, as a user types it."""
    return subprocess.run([FRONTFORCE, *args, "-c", str(stack.state_dir / "frontforce.yaml")],
                          env=stack.env(), cwd=REPO, text=True, capture_output=True, timeout=timeout)


class Writes:
    """What the emulators count as written: every committed Salesforce write is a change
    event (the org's CDC replay id moves; FeedItems have none, their rows are counted), and
    every 2xx public write request the Front emulator answered."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p

    def now(self) -> dict[str, int]:
        sf = self.p.admin
        cdc = sf.get("/__admin/cdc")
        cdc.raise_for_status()
        feed = sf.get("/__admin/records/FeedItem")
        feed.raise_for_status()
        reqs = self.p.front.get("/__admin/requests")
        reqs.raise_for_status()
        return {
            "salesforce_changes": int(cdc.json()["latest_replay_id"]),
            "salesforce_feed_items": len(feed.json()["records"]),
            "front_writes": sum(1 for r in reqs.json()["requests"]
                                if r["method"] in ("POST", "PUT", "PATCH", "DELETE")
                                and 200 <= int(r["status"]) < 300),
        }

    def quiet(self, groups: dict[str, list[str]], quiet_s: float = 3.0, timeout_s: float = 120) -> dict[str, int]:
        """The counts once every group caught up and nothing was written for ``quiet_s``."""
        deadline = time.monotonic() + timeout_s
        last, since = self.now(), time.monotonic()
        while True:
            assert wait_settled(self.p.stack.bootstrap, groups, max(5.0, deadline - time.monotonic()),
                                quiet_s=1.0), describe_lag(self.p.stack.bootstrap, groups)
            now = self.now()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return now
            assert time.monotonic() < deadline, "the pipeline did not quiet down"
            time.sleep(0.5)


def extra_writes(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before if after[k] != before[k]}


def _front_state(p: Pipeline) -> dict[str, Any]:
    r = p.front.get("/__admin/state")
    r.raise_for_status()
    return {k: v for k, v in r.json().items() if k in ("accounts", "contacts", "conversations")}


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON documents differ, ``updated_at`` aside (a write's own stamp)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) if k != "updated_at"
                for d in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [f"{path}: {str(a)[:200]} -> {str(b)[:200]}"]


def front_writes(p: Pipeline, since: int = 0) -> list[str]:
    """``METHOD path`` of every 2xx public write request at the Front emulator, from the
    ``since``-th request on."""
    r = p.front.get("/__admin/requests")
    r.raise_for_status()
    return [f"{x['method']} {x['path']}" for x in r.json()["requests"][since:]
            if x["method"] in ("POST", "PUT", "PATCH", "DELETE") and 200 <= int(x["status"]) < 300]


def front_corrections(before: dict[str, Any], after: dict[str, Any],
                      writes: list[str]) -> tuple[set[str], list[str]]:
    """(the accounts and contacts a replay's Front writes changed, what else is wrong).

    A replay re-renders an Account's context from the tables as they are then, not as they
    were the first time: a context that was incomplete the first time (its owner's name
    indexed after the Account was rendered, fixed since) would be "corrected" by the replay,
    which the replay test refuses as well. A repeat of a conversation write (a tag, a
    comment, an assignment) is wrong whatever it changed; an account or contact write that
    changed nothing (an identical repeat) is wrong too."""
    diffs = _diff(before, after)
    changed = {".".join(d.split(":", 1)[0].split(".")[:3]) for d in diffs
               if d.startswith((".accounts.", ".contacts."))}
    wrong = [d for d in diffs if not d.startswith((".accounts.", ".contacts."))]
    wrong += [w for w in writes if not w.split(" ", 1)[1].startswith(("/accounts", "/contacts"))]
    if writes and not changed:
        wrong.append(f"{len(writes)} Front write(s) that changed no account or contact: {writes}")
    return changed, wrong


def stop_stages(stack: LocalStack, *names: str) -> None:
    for name in names:  # SIGTERM: each leaves its group at once
        stack.stop_process(name)


def start_stages(stack: LocalStack, *names: str, module: str = "frontforce") -> None:
    args = {"worker": ("worker",), "sink-salesforce": ("sink", "salesforce"),
            "sink-front": ("sink", "front")}
    for name in names:
        stack.spawn(name, *args[name], module=module)


class Up:
    """``frontforce up`` started in the background as soon as the module starts (its two
    JVMs start while the pipeline fixture does its own work); stopped at the end whatever
    happened."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FRONTFORCE_")}
        self.proc = subprocess.Popen([FRONTFORCE, "up", "--free-ports", "--state-dir", str(state)],
                                     env=self.env, cwd=REPO, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FRONTFORCE, *args], env=self.env, cwd=REPO, text=True,
                              capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def up_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(tmp_path_factory.mktemp("up") / "state")
    try:
        yield up
    finally:
        if up.proc.poll() is None:
            up.proc.wait(240)
        up.run("down", "--state-dir", str(up.state), timeout=120)


@pytest.fixture(scope="module")
def pipe(up_started: Up, infra: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with running_pipeline(infra, tmp_path_factory.mktemp("ops")) as p:
        # Front's budget raised: every message's AssignConversation reads Front's teammates
        # (100 requests a minute would take the Front sink minutes); pacing is not under test.
        r = p.front.post("/__admin/config", json={"rpm": 100000, "burst_rps": 1000})
        assert r.status_code == 200, r.text
        yield p


@pytest.fixture(scope="module")
def processed(pipe: Pipeline) -> dict[str, Any]:
    """1,000 inbound messages from known senders through the worker and both sinks (a Task
    each; the Accounts' context reaches Front), every Task written, everything quiet. They
    are produced onto front.events as the receiver stores them (its normalization, its key,
    its Avro): 1,000 webhooks through the receiver take ~20 s on two cores."""
    tag = uuid.uuid4().hex[:6]
    since_ms = int(time.time() * 1000) - 1
    _produce(pipe.stack, [event(KNOWN[i % len(KNOWN)].email, tag, i) for i in range(EVENTS)])
    ids = {f"msg_{tag}{i}" for i in range(EVENTS)}
    tasks = pipe.tasks_for(ids, expect=EVENTS, timeout=120)
    assert len(tasks) == EVENTS
    counts = Writes(pipe).quiet(pipe.stack.worker_groups)
    assert counts["front_writes"] > 0  # the Accounts' context: what a Front sink replays
    return {"tag": tag, "since_ms": since_ms, "ids": ids, "counts": counts}


def _produce(stack: LocalStack, events: list[dict[str, Any]]) -> None:
    from confluent_kafka import Producer

    from frontforce.kafka import producer_config
    from frontforce.serialization import Serde
    from sources.front._normalize import event_key, normalize_event

    s = stack.settings()
    serde = Serde(s)
    producer = Producer(producer_config(s))
    for e in events:
        record = normalize_event(e, "APP_WEBHOOK", envelope_type="inbound_received")
        producer.produce(s.topics.front_events, key=event_key(record),
                         value=serde.encode(s.topics.front_events, record))
        producer.poll(0)
    assert producer.flush(30) == 0


def _deliver(pipe: Pipeline, events: list[dict[str, Any]], threads: int = 4, pace_s: float = 0.0) -> None:
    from emulators.front import WebhookEmitter

    def send(chunk: list[dict[str, Any]]) -> None:
        emitter = WebhookEmitter(pipe.stack.receiver_url, pipe.stack.app_secret.encode())
        try:
            for e in chunk:
                assert emitter.deliver(e) == 200
                if pace_s:
                    time.sleep(pace_s)
        finally:
            emitter.close()

    workers = [threading.Thread(target=send, args=(events[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def _per_partition(bootstrap: str, topic: str, since_ms: int) -> dict[int, int]:
    out: Counter[int] = Counter()
    for m in read_to_end(bootstrap, topic):
        if m.timestamp()[1] >= since_ms:
            out[m.partition() or 0] += 1
    return dict(out)


def test_dry_run_counts_per_partition_what_was_produced_since_the_time(
        pipe: Pipeline, processed: dict[str, Any]) -> None:
    """``replay --dry-run`` tells, per group and partition, how many records a replay from
    that time would read again: exactly the records produced since then (counted here by an
    independent reader), the 1,000 webhooks on front.events; and it changes nothing."""
    stack = pipe.stack
    s = stack.settings()
    since = f"{processed['since_ms'] / 1000:.3f}"
    r = cli(stack, "replay", "--from", since, "--dry-run")
    assert r.returncode == 0, r.stderr
    seen: dict[tuple[str, str, int], int] = {}
    for line in r.stdout.splitlines():
        m = re.match(r"(\S+)\s+(\S+)\[(\d+)\]\s+(\S+)\s+(\S+)\s+(\d+)$", line)
        if m:
            seen[(m.group(1), m.group(2), int(m.group(3)))] = int(m.group(6))
    t = s.topics
    for group, topic in [(s.fast_lane_group, t.front_events), (s.worker.app_id, t.salesforce_changes),
                         (s.sink.group_id, t.commands_salesforce), (s.front_sink.group_id, t.commands_front)]:
        produced = _per_partition(stack.bootstrap, topic, processed["since_ms"])
        shown = {p: n for (g, tp, p), n in seen.items() if g == group and tp == topic}
        assert shown == {p: produced.get(p, 0) for p in range(s.kafka.partitions)}, (group, topic, r.stdout)
    assert sum(n for (g, tp, _), n in seen.items() if tp == t.front_events) == EVENTS
    assert f"{s.worker.app_id}: " in r.stdout and "RUNNING" in r.stdout  # it says to stop them
    # --json carries the same numbers; nothing moved.
    j = json.loads(cli(stack, "replay", "--from", since, "--dry-run", "--json").stdout)
    assert {(x["group"], x["topic"], x["partition"]): x["reread"] for x in j["rows"]} == seen
    assert all(x["committed"] == x["end"] for x in j["rows"])


def test_status_shows_lag_rates_quota_and_dead_letters(pipe: Pipeline, processed: dict[str, Any]) -> None:
    """``frontforce status`` on a running pipeline: every group with its members and lag,
    Salesforce's daily quota, Front's rate-limit headroom, the dead-letter depth."""
    r = cli(pipe.stack, "status")
    assert r.returncode == 0, r.stderr
    s = pipe.stack.settings()
    for g in (s.worker.app_id, s.fast_lane_group, s.sink.group_id, s.front_sink.group_id):
        assert re.search(rf"^{re.escape(g)}\s+\S+\s+Stable\s+1\s+\d+", r.stdout, re.M), r.stdout
    assert re.search(r"salesforce API\s+[\d,]+ of [\d,]+ daily requests used", r.stdout), r.stdout
    assert re.search(r"front API\s+[\d,]+ of [\d,]+ requests left", r.stdout), r.stdout
    assert re.search(r"dead letters\s+0 on ", r.stdout), r.stdout
    d = json.loads(cli(pipe.stack, "status", "--json").stdout)
    assert d["groups"][s.sink.group_id]["partitions"][0].keys() >= {"topic", "partition", "lag", "committed", "end"}
    assert d["salesforce"]["daily_api_requests"]["used"] > 0
    assert d["deadletter"]["depth"] == 0 and d["audit"]["failures"] == []


def test_replay_refuses_a_running_group_and_names_it(pipe: Pipeline, processed: dict[str, Any]) -> None:
    """Kafka moves a group's offsets only while it has no members: replay says which group
    runs and changes nothing."""
    r = cli(pipe.stack, "replay", "--from", "beginning", "--group", "sink-front")
    assert r.returncode == 1
    assert "replay refused" in r.stderr and pipe.stack.settings().front_sink.group_id in r.stderr
    r = cli(pipe.stack, "replay", "--from", "beginning", "--group", "nope")
    assert r.returncode == 2 and "unknown group nope" in r.stderr


def test_replay_from_the_beginning_writes_nothing_again_and_loses_no_new_event(
        pipe: Pipeline, processed: dict[str, Any]) -> None:
    """Guards the promise of ``frontforce replay``: after 1,000 events went through, a
    replay of every group from the beginning re-reads all of it and writes nothing again in
    Salesforce or Front (idempotent sinks), while webhooks that keep arriving during the
    stop, the replay and the restart are each written exactly once."""
    stack = pipe.stack
    writes = Writes(pipe)
    before = writes.now()
    assert before == processed["counts"]
    front_before = _front_state(pipe)
    requests_before = len(pipe.front.get("/__admin/requests").json()["requests"])
    tag = uuid.uuid4().hex[:6]
    new = [event(KNOWN[i % len(KNOWN)].email, tag, i) for i in range(150)]
    feeder = threading.Thread(target=_deliver, args=(pipe, new), kwargs={"threads": 1, "pace_s": 0.04})
    feeder.start()
    try:
        stop_stages(stack, *STAGES)
        replay = subprocess.Popen(
            [FRONTFORCE, "replay", "--from", "beginning", "--timeout", "150",
             "-c", str(stack.state_dir / "frontforce.yaml")],
            env=stack.env(), cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(3)  # it has moved the groups and is waiting for them
        start_stages(stack, *STAGES)
        out, err = replay.communicate(timeout=180)
    finally:
        feeder.join()
    assert replay.returncode == 0, err
    s = stack.settings()
    for g in (s.fast_lane_group, s.worker.app_id, s.sink.group_id, s.front_sink.group_id):
        moved = re.search(rf"^{re.escape(g)}: moved back to .*: (\d+) record\(s\) to re-read", out, re.M)
        assert moved and int(moved.group(1)) > 0, out
        again = re.search(rf"{re.escape(g)} re-read (\d+)", out)
        assert again and int(again.group(1)) >= int(moved.group(1)), out
    assert "caught up" in out
    new_ids = {f"msg_{tag}{i}" for i in range(len(new))}
    tasks = pipe.tasks_for(new_ids, expect=len(new), timeout=120)
    after = writes.quiet(stack.worker_groups)
    per_id = Counter(t["Front_Message_Id__c"] for t in pipe.tasks() if t.get("Front_Message_Id__c") in new_ids)
    assert len(tasks) == len(new) and set(per_id.values()) == {1}, per_id
    old = Counter(t["Front_Message_Id__c"] for t in pipe.tasks() if t.get("Front_Message_Id__c") in processed["ids"])
    assert len(old) == EVENTS and set(old.values()) == {1}
    # Salesforce: the only writes are the new Tasks (a flush of several is one change event
    # or more). Front: nothing written again, and nothing in it changed.
    extra = extra_writes(before, after)
    corrected, repeats = front_corrections(front_before, _front_state(pipe),
                                           front_writes(pipe, requests_before))
    assert not repeats, (extra, repeats)
    assert not corrected, (corrected, _diff(front_before, _front_state(pipe)))
    assert set(extra) <= {"salesforce_changes", "front_writes"}, extra
    assert 0 < extra.get("salesforce_changes", 0) <= len(new), extra
    processed["counts"] = after


def test_the_no_new_writes_check_sees_one_extra_write_at_either_emulator(
        pipe: Pipeline, processed: dict[str, Any]) -> None:
    """The check above can fail: one write more at Salesforce (a Task created through the
    public API, as a sink that forgot its external id would) and one at Front (a comment
    posted with the API token, as a Front sink that forgot its ledger would) are each
    counted, so a replay that wrote anything again would fail it."""
    from frontforce.salesforce import connect

    writes = Writes(pipe)
    before = writes.quiet(pipe.stack.worker_groups, quiet_s=1.0)
    front_before = _front_state(pipe)
    requests_before = len(pipe.front.get("/__admin/requests").json()["requests"])
    conn = connect(pipe.stack.settings().salesforce)
    conn.client.Task.create({"Subject": "written twice", "Front_Message_Id__c": f"dup-{uuid.uuid4().hex}"})
    assert extra_writes(before, writes.now()) == {"salesforce_changes": 1}
    conv = f"cnv_check{uuid.uuid4().hex[:8]}"
    pipe.front_conversations(conv)  # through the admin API: not a public write
    r = pipe.front.post(f"/conversations/{conv}/comments", json={"body": "written twice"},
                        headers={"Authorization": f"Bearer {pipe.stack.front_token}"})
    assert r.status_code in (200, 201), r.text
    extra = extra_writes(before, writes.now())
    assert extra == {"salesforce_changes": 1, "front_writes": 1}
    _, wrong = front_corrections(front_before, _front_state(pipe), front_writes(pipe, requests_before))
    assert wrong and any("/comments" in w for w in wrong), wrong
    processed["counts"] = writes.now()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_up_status_down_as_the_readme_says(up_started: Up) -> None:
    """``frontforce up`` starts a stack of its own (Kafka, registry, both emulators, topics
    and schemas) and returns, leaving it running; its config file works as is for
    ``frontforce status``; ``up`` again changes nothing; ``frontforce down`` stops every
    process ``up`` started and frees every port."""
    up, state = up_started, up_started.state
    out, err = up.proc.communicate(timeout=300)
    assert up.proc.returncode == 0, err
    assert "frontforce local stack is up" in out
    config = re.search(r"^\s+config\s+(\S+)$", out, re.M)
    assert config and Path(config.group(1)).exists(), out
    info = json.loads(up.run("up", "--state-dir", str(state), "--json").stdout)  # idempotent
    assert info["config"] == config.group(1)
    pids = list(info["pids"].values())
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    st = up.run("status", "-c", info["config"], "--sample", "0.2")
    assert st.returncode == 0, st.stderr
    assert "salesforce API" in st.stdout and "front API" in st.stdout
    d = json.loads(up.run("status", "-c", info["config"], "--json", "--sample", "0.2").stdout)
    assert d["kafka"]["error"] is None and d["lag_total"] == 0
    assert all({"lag", "partitions", "state", "members", "records_per_s"} <= g.keys()
               for g in d["groups"].values())
    assert d["salesforce"]["daily_api_requests"]["max"] > 0 and d["front"]["rate_limit"]["limit"] > 0
    ports = [int(u.rsplit(":", 1)[1].split("/")[0]) for u in
             (info["kafka_bootstrap"], info["schema_registry_url"].split("/apis")[0],
              info["salesforce_url"], info["front_url"])]
    assert all(_port_open(p) for p in ports)
    stack_pids = [int((state / "stack" / "run" / f"{role}.pid").read_text()) for role in ("kafka", "registry")]
    down = up.run("down", "--state-dir", str(state), timeout=120)
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("stopped: ") and "kafka" in down.stdout and "front-emulator" in down.stdout
    assert not any(_alive(p) for p in pids + stack_pids)
    assert not any(_port_open(p) for p in ports)
    assert up.run("down", "--state-dir", str(state)).stdout.strip() == "nothing was running"


def test_replay_never_moves_a_group_forward_nor_where_it_never_committed() -> None:
    """A group behind ``--from`` keeps its offset (moving it would skip records it never
    handled); a partition without a committed offset is left alone; ``--to`` bounds what is
    counted as re-read."""
    from frontforce.ops.replay import Row

    caught_up = Row("g", "t", 0, committed=100, from_offset=40, to_offset=100, end=100)
    assert (caught_up.new_offset, caught_up.reread) == (40, 60)
    behind = Row("g", "t", 1, committed=30, from_offset=40, to_offset=100, end=100)
    assert (behind.new_offset, behind.reread, behind.total) == (30, 0, 70)
    never = Row("g", "t", 2, committed=None, from_offset=40, to_offset=100, end=100)
    assert (never.new_offset, never.reread) == (None, 0)
    bounded = Row("g", "t", 0, committed=100, from_offset=40, to_offset=70, end=100)
    assert bounded.reread == 30
