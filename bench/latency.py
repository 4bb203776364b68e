"""Latency webhook -> Salesforce Task, per event, at fixed rates, the full pipeline running.

    .venv/bin/python bench/latency.py --rates 200 1000 --duration 60

Starts its own stack (free ports, throw-away state): Kafka, the registry, the Salesforce
emulator with ``--contacts`` Contacts (the snapshot loaded), its daily API allocation raised
so that quota is never the limit, and a latency rule on every public request: each call is
held ``--sf-before-ms`` before it is served (the write lands then) and its answer
``--sf-after-ms`` after (``/__admin/faults`` "latency", phases before/after). Then the
receiver (``--receiver-workers`` processes), one stream worker and the Salesforce sink.

First ``--warmup`` seconds at ``--warmup-rate``, not measured: a freshly started Kafka
broker spends about 0.3 of a core in its first minute of load compiling (the JVM's C2
thread), which a deployed broker did long ago. Then, for each rate, an open-loop sender (a
lean HTTP/1.1 client on uvloop, ``--connections`` keep-alive connections) sends
inbound-message webhooks from known Contacts at ``rate``/s for ``--duration`` seconds, each
signed just before the run. Per event the latency is the emulator's stored
``CreatedDate`` of its Task (milliseconds) minus the moment the webhook was due to be sent
(the schedule, so that a sender or receiver falling behind counts against the pipeline,
not hidden by it; how late the sender actually was is printed too). Consumer-group lag of
the worker (front.events + the re-key topic) and of the sink (commands.salesforce) is
sampled every second from the first webhook until every Task is written (or ``--timeout``).

A rate the pipeline cannot drain shows as latency growing with the send time and lag
growing during the run: the figures are then those of this run's length, not a steady
state (the JSON says so: ``keeps_up``). Prints one JSON line; ``--out`` keeps the samples
for bench/charts.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvloop
import yaml
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from emulators.front import WebhookEmitter, inbound_email_event
from emulators.scenario import Person, people, seed_salesforce
from frontforce.kafka import read_to_end
from frontforce.lag import describe_lag, wait_settled
from frontforce.localstack import LocalStack, Ports, free_port
from frontforce.serialization import Serde
from sources.front._signature import sign_app_webhook


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, int(round(q * len(s))) - 1))], 1)


class LagSampler:
    """Lag of some consumer groups every ``interval_s``, with long-lived clients."""

    def __init__(self, bootstrap: str, groups: dict[str, list[str]], interval_s: float = 1.0):
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-latency-probe",
                               "enable.auto.commit": False})
        md = self.admin.list_topics(timeout=10).topics
        self.groups = {g: [TopicPartition(t, p) for t in ts if t in md for p in md[t].partitions]
                       for g, ts in groups.items()}
        self.interval_s = interval_s
        self.t0 = 0.0
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def lag(self) -> dict[str, int]:
        out = {}
        for group, tps in self.groups.items():
            fut = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in fut[group].result(timeout=10).topic_partitions}
            total = 0
            for tp in tps:
                low, high = self.probe.get_watermark_offsets(tp, timeout=10)
                pos = committed.get((tp.topic, tp.partition), -1)
                behind = high - (pos if pos >= 0 else low)
                total += behind
                key = f"{group}|{tp.topic}"
                out[key] = out.get(key, 0) + behind
            out[group] = total
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append({"t": round(time.time() - self.t0, 2), **self.lag()})
            except Exception as exc:  # noqa: BLE001 - a missed sample is not worth failing for
                say(f"lag sample failed: {exc}")
            self._stop.wait(self.interval_s)

    def start(self, t0: float) -> None:
        self.t0, self.samples = t0, []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def close(self) -> None:
        self.probe.close()
        del self.admin  # its threads go with it, before the broker does


async def send_all(url: str, secret: bytes, bodies: list[bytes], rate: float,
                   connections: int) -> tuple[float, list[float], list[float], list[int], list[float]]:
    """Open loop: body i is due at t0 + i / rate. Returns t0 (epoch s), how late each send
    started (s), each answer's time after t0 (s), each status (0: no answer) and each due
    time on the wall clock (epoch s), read when it fell due: this VM's wall clock drifts
    against the monotonic one (0.2 s in a minute here), and the latencies are wall-clock
    differences with the emulator's CreatedDate.

    A lean HTTP/1.1 client on keep-alive connections: the requests are built and signed
    before the run (inside Front's 5-minute window), a due request waits in a queue for a
    free connection (its wait counts in its latency), and an answer is read by its
    Content-Length. aiohttp cost ~0.3 of a core at 1,000/s on this 2-core machine, taken
    from the pipeline it measures; this costs a fraction of it."""
    n = len(bodies)
    late = [0.0] * n
    answered = [0.0] * n
    status = [0] * n
    due_wall = [0.0] * n
    u = httpx.URL(url)
    host, port, path = u.host, u.port or 80, u.raw_path.decode()
    ts = str(int(time.time() * 1000))
    requests = [(
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"x-front-request-timestamp: {ts}\r\nx-front-signature: {sign_app_webhook(secret, ts, b)}\r\n"
        f"content-length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[int] = asyncio.Queue()
    mono0 = loop.time() + 0.2
    epoch0 = time.time() + (mono0 - loop.time())

    async def connection() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            i = await queue.get()
            if i < 0:
                break
            late[i] = loop.time() - (mono0 + i / rate)
            try:
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(requests[i])
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                status[i] = int(head.split(b" ", 2)[1])
                if b"connection: close" in head.lower():
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError, ValueError):
                status[i] = 0
                if writer is not None:
                    writer.close()
                reader = writer = None
            answered[i] = loop.time() - mono0
        if writer is not None:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    for i in range(n):
        wait = mono0 + i / rate - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        due_wall[i] = time.time() - (loop.time() - (mono0 + i / rate))
        queue.put_nowait(i)
    for _ in workers:
        queue.put_nowait(-1)
    await asyncio.gather(*workers)
    return epoch0, late, answered, status, due_wall


# Which part of the run a process is, by its command line (first match wins).
ROLES = [("receiver", "frontforce receiver"), ("worker", "frontforce worker"),
         ("sink", "frontforce sink"), ("salesforce emulator", "emulators.salesforce"),
         ("salesforce emulator", "emulators salesforce"), ("kafka", "kafka.Kafka"),
         ("registry", "apicurio"), ("registry", "registry")]


def cpu_by_role(sender_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each part of the run, from /proc: the
    processes whose command line names a role, their children (the receiver's spawned
    workers) with them, and this process (the sender)."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, str, float]] = {}  # pid -> (parent, command line, cpu s)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(entry.name)] = (int(fields[1]), cmd, (int(fields[11]) + int(fields[12])) / tick)

    def role_of(pid: int, depth: int = 0) -> str | None:
        if pid == sender_pid:
            return "sender"
        if pid not in procs or depth > 3:
            return None
        parent, cmd, _ = procs[pid]
        found = next((r for r, needle in ROLES if needle in cmd), None)
        return found or role_of(parent, depth + 1)

    out: dict[str, float] = {}
    for pid, (_, _, cpu) in procs.items():
        role = role_of(pid)
        if role is not None:
            out[role] = out.get(role, 0.0) + cpu
    # The whole machine, busy (everything but idle and iowait), for comparison.
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    out["machine (all processes)"] = (sum(ticks) - ticks[3] - ticks[4]) / tick
    return out


def start_pipeline(stack: LocalStack, receiver_workers: int, sink_processes: int = 1) -> None:
    """Receiver, worker and Salesforce sink(s): the path webhook -> Task, nothing else.
    Several sink processes are members of the sink's one group: the partitions of
    ``commands.salesforce`` are split between them, each flushing its own."""
    stack.spawn("worker", "worker")
    stack.spawn("sink-salesforce", "sink", "salesforce")
    for n in range(2, sink_processes + 1):
        stack.spawn(f"sink-salesforce-{n}", "sink", "salesforce")
    stack.spawn("receiver", "receiver", "--workers", str(receiver_workers))
    deadline = time.monotonic() + 300  # a busy machine starts interpreters slowly
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


def stages(stack: LocalStack, run: str, due: dict[str, float],
           written: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """Where each event's latency went, from the record timestamps (CreateTime: set when
    each producer took the record): the receiver (due -> its record on ``front.events``),
    the worker (-> the command on ``commands.salesforce``) and the sink (-> the Task's
    CreatedDate, the emulator's 'before' latency included); p50/p99 of each, in ms."""
    s = stack.settings()
    serde = Serde(s)
    event_at: dict[str, float] = {}
    for m in read_to_end(stack.bootstrap, s.topics.front_events, 120):
        ev = serde.decode(s.topics.front_events, m.value(), plain=True)
        if str(ev.get("event_id", "")).startswith(f"evt_{run}"):
            event_at[str(ev["event_id"])] = m.timestamp()[1] / 1000.0
    command_at: dict[str, float] = {}
    for m in read_to_end(stack.bootstrap, s.topics.commands_salesforce, 120):
        cmd = serde.decode(s.topics.commands_salesforce, m.value(), plain=True)
        eid = str(cmd["origin"]["correlation_id"])
        if eid.startswith(f"evt_{run}"):
            command_at.setdefault(eid, m.timestamp()[1] / 1000.0)
    parts: dict[str, list[float]] = {"receiver": [], "worker": [], "sink": []}
    for mid, at in due.items():
        eid = "evt_" + mid[len("msg_"):]
        if mid in written and eid in event_at and eid in command_at:
            parts["receiver"].append((event_at[eid] - at) * 1000)
            parts["worker"].append((command_at[eid] - event_at[eid]) * 1000)
            parts["sink"].append((written[mid] - command_at[eid]) * 1000)
    return {k: {"p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99)} for k, v in parts.items()}


def run_rate(stack: LocalStack, admin: httpx.Client, sampler: LagSampler, known: list[Person],
             rate: float, args: argparse.Namespace, sink_group: str, index: int = 0,
             duration: float | None = None) -> dict[str, Any]:
    duration = args.duration if duration is None else duration
    # Ids unique per run: a rate given twice (``--rates 1000 1000``, the second on a warm
    # broker) must not resend the first run's events, which the worker drops as repeats.
    run = f"lat{index}r{int(rate)}x"
    n = int(rate * duration)
    emitter = WebhookEmitter(stack.receiver_url, stack.app_secret.encode())
    now = time.time()
    bodies = [emitter.body_for(inbound_email_event(
        base_url="https://acme.api.frontapp.com", event_id=f"evt_{run}{i}",
        conversation_id=f"cnv_{run}{i % 2000}", message_id=f"msg_{run}{i}", inbox_id="inb_1",
        sender=known[i % len(known)].email, sender_name=None, to="support@acme.example",
        subject="Benchmark", text="x" * 400, emitted_at=now)) for i in range(n)]
    emitter.close()
    say(f"{rate:g}/s for {duration:g} s: {n} webhooks")
    cpu0, wall0 = cpu_by_role(os.getpid()), time.monotonic()
    # Latencies are differences of wall clocks (the emulator's CreatedDate, the record
    # timestamps, each due time read as it fell due): how far this VM's clock moved against
    # the monotonic one is printed; only its drift within one event's latency counts.
    offset0 = time.time() - time.monotonic()
    sampler.start(time.time())
    epoch0, late, answered, status, due_wall = uvloop.run(send_all(
        stack.receiver_url, stack.app_secret.encode(), bodies, rate, args.connections))
    cpu_sent, wall_sent = cpu_by_role(os.getpid()), time.monotonic() - wall0
    sending = {role: round((cpu_sent[role] - cpu0.get(role, 0.0)) / wall_sent, 2) for role in sorted(cpu_sent)}
    say(f"CPU cores used while sending ({wall_sent:.0f} s, until the last answer): {sending}")
    accepted = {f"msg_{run}{i}": due_wall[i] for i in range(n) if 200 <= status[i] < 300}
    say(f"sent: {len(accepted)} accepted, {n - len(accepted)} refused or failed; "
        f"last answer {max(answered):.1f} s after the first send; waiting for the Tasks")
    deadline = time.monotonic() + args.timeout
    written: dict[str, float] = {}
    said = time.monotonic()
    while time.monotonic() < deadline:
        lag = {k: v for k, v in (sampler.samples[-1] if sampler.samples else {}).items()
               if k != "t" and "|" not in k}
        if time.monotonic() - said > 15:
            say(f"lag {lag}")
            said = time.monotonic()
        # Reading every Task is heavy for the emulator: only once the sink has caught up.
        if lag.get(sink_group, 0) == 0:
            tasks = admin.get("/__admin/records/Task").json()["records"]
            written = {t["Front_Message_Id__c"]: datetime.strptime(
                t["CreatedDate"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
                for t in tasks if str(t.get("Front_Message_Id__c") or "").startswith(f"msg_{run}")}
            if set(accepted) <= set(written):
                break
        time.sleep(2.0)
    sampler.stop()
    cpu1, wall = cpu_by_role(os.getpid()), time.monotonic() - wall0
    # Cores each part used from the first send until every Task was read back.
    cpu_cores = {role: round((cpu1[role] - cpu0.get(role, 0.0)) / wall, 2) for role in sorted(cpu1)}
    say(f"CPU cores used over {wall:.0f} s: {cpu_cores}")
    clock_step_ms = round((time.time() - time.monotonic() - offset0) * 1000, 1)
    say(f"the wall clock moved {clock_step_ms} ms against the monotonic one during the run")
    for name, proc in stack.procs.items():
        if proc.poll() is not None:
            say(f"{name} exited with {proc.returncode}")
    missing = len(set(accepted) - set(written))
    if missing:
        say(f"{missing} Tasks not written within {args.timeout:g} s; "
            f"lag {describe_lag(stack.bootstrap, stack.worker_groups)}")
    # per event: (due time after t0, latency)
    per_event = sorted((accepted[m] - epoch0, (written[m] - accepted[m]) * 1000)
                        for m in accepted if m in written)
    lat = [ms for _, ms in per_event]
    by_stage = stages(stack, run, accepted, written)
    say(f"by stage: {by_stage}")
    # The receiver's answer, from the moment each webhook was due (Front's deadline: ~5 s).
    answer_ms = [(answered[i] - i / rate) * 1000 for i in range(n) if status[i]]
    # Keeping up: the last tenth of the sends is not slower than the first tenth by more
    # than a second (a backlog adds its drain time to every later event).
    tenth = max(1, len(per_event) // 10)
    first_p50 = pct([ms for _, ms in per_event[:tenth]], 0.5) or 0.0
    last_p50 = pct([ms for _, ms in per_event[-tenth:]], 0.5) or 0.0
    done_at = max(written[m] for m in accepted if m in written) - epoch0 if per_event else None
    return {
        "rate": rate, "duration_s": duration, "sent": n, "accepted": len(accepted),
        "refused_or_failed": n - len(accepted), "tasks_written": len(per_event),
        "wall_clock_step_ms": clock_step_ms,
        "missing": missing,
        "send_late_ms_p99": round(sorted(late)[int(0.99 * (n - 1))] * 1000, 1),
        "receiver_answer_last_s": round(max(answered), 1),
        "answer_ms_p50": pct(answer_ms, 0.5), "answer_ms_p99": pct(answer_ms, 0.99),
        "answers_over_5s": sum(1 for ms in answer_ms if ms > 5000),
        "no_answer": sum(1 for x in status if x == 0),
        "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "p999_ms": pct(lat, 0.999),
        "max_ms": round(max(lat), 1) if lat else None,
        "first_tenth_p50_ms": first_p50, "last_tenth_p50_ms": last_p50,
        "keeps_up": bool(per_event) and not missing and last_p50 - first_p50 < 1000,
        "last_task_after_first_send_s": round(done_at, 1) if done_at is not None else None,
        "stages": by_stage,
        "events": [(round(t, 3), round(ms, 1)) for t, ms in per_event],
        "lag": sampler.samples,
        "cpu_cores": cpu_cores, "cpu_wall_s": round(wall, 1),
        "cpu_cores_sending": sending, "cpu_sending_wall_s": round(wall_sent, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[200.0, 1000.0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of sending per rate")
    ap.add_argument("--contacts", type=int, default=1000, help="known Contacts seeded")
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="seconds of load before the measured rates, not measured (0: none)")
    ap.add_argument("--warmup-rate", type=float, default=500.0, help="webhooks/s of the warm-up")
    ap.add_argument("--connections", type=int, default=128, help="sender connections")
    ap.add_argument("--receiver-workers", type=int, default=1,
                    help="receiver processes (1: on 2 cores shared with the whole pipeline, a second"
                    " one cost more than it served, BENCHMARKS.md)")
    ap.add_argument("--sink-processes", type=int, default=1,
                    help="Salesforce sink processes (members of one group, the partitions split)")
    ap.add_argument("--sf-before-ms", type=float, default=150.0,
                    help="emulator latency before serving each call (the write lands after it)")
    ap.add_argument("--sf-after-ms", type=float, default=50.0,
                    help="emulator latency between the write and its answer")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="any other config value for this run, e.g. worker.batch_wait_ms=50")
    ap.add_argument("--linger-ms", type=int, default=None,
                    help="kafka.linger_ms for this run (default: the config's default)")
    ap.add_argument("--batch-wait-ms", type=int, default=None,
                    help="sink.batch_wait_ms for this run (default: the config's default)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds to wait for every Task after the last webhook")
    ap.add_argument("--out", type=Path, default=None, help="JSON with the samples (for charts)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on the way out
    state = Path(tempfile.mkdtemp(prefix="ff-bench-lat-"))
    stack = LocalStack(state_dir=state, ports=Ports(
        kafka=free_port(), controller=free_port(), registry=free_port(),
        salesforce=free_port(), receiver=free_port()), persist=False)
    results = []
    try:
        say(f"state in {state}; starting Kafka, registry, Salesforce emulator")
        stack.start_infra()
        stack.start_salesforce()
        stack.write_config()
        path = state / "frontforce.yaml"
        if args.batch_wait_ms is not None or args.linger_ms is not None or args.set:
            conf = yaml.safe_load(path.read_text())
            for assignment in args.set:
                dotted, _, value = assignment.partition("=")
                section, _, key = dotted.partition(".")
                conf.setdefault(section, {})[key] = yaml.safe_load(value)
            if args.batch_wait_ms is not None:
                conf.setdefault("sink", {})["batch_wait_ms"] = args.batch_wait_ms
            if args.linger_ms is not None:
                conf.setdefault("kafka", {})["linger_ms"] = args.linger_ms
            path.write_text(yaml.safe_dump(conf, sort_keys=False))
        settings = stack.settings()
        stack.frontforce("setup")
        known = people(args.contacts, seed=31)
        assert stack.ca_file is not None
        seed_salesforce(stack.salesforce_url, str(stack.ca_file), known)
        admin = httpx.Client(base_url=stack.salesforce_url, timeout=120,
                             verify=ssl.create_default_context(cafile=str(stack.ca_file)))
        admin.post("/__admin/config", json={"daily_limit": 100_000_000}).raise_for_status()
        stack.frontforce("load", "salesforce")
        rules = []
        if args.sf_before_ms > 0:
            rules.append({"match": {"path_regex": "^/services/"}, "fault": "latency",
                          "ms": args.sf_before_ms})
        if args.sf_after_ms > 0:
            rules.append({"match": {"path_regex": "^/services/"}, "fault": "latency",
                          "ms": args.sf_after_ms, "phase": "after"})
        if rules:
            admin.post("/__admin/faults", json={"rules": rules}).raise_for_status()
        say(f"starting receiver (x{args.receiver_workers}), worker, sink "
            f"(sink.batch_wait_ms={settings.sink.batch_wait_ms}); "
            f"Salesforce latency {args.sf_before_ms:g} + {args.sf_after_ms:g} ms")
        start_pipeline(stack, args.receiver_workers, args.sink_processes)
        groups = {stack.app_id: stack.worker_groups[stack.app_id][:2]}
        assert wait_settled(stack.bootstrap, groups, 120)
        # Every group of the path, as the local stack knows them (the worker's groups change
        # with its design: whichever reads front.events, the re-key topics, the sink's).
        lag_groups = {g: ts for g, ts in stack.worker_groups.items() if g != f"{stack.app_id}-sink-front"}
        sampler = LagSampler(stack.bootstrap, lag_groups)
        if args.warmup > 0:
            # A freshly started broker spends 0.3 of a core compiling (the JVM's C2 thread) in
            # its first minute of load: a warm broker, as in any deployment, before measuring.
            say(f"warm-up, not measured: {args.warmup_rate:g}/s for {args.warmup:g} s")
            run_rate(stack, admin, sampler, known, args.warmup_rate, args, settings.sink.group_id,
                     len(args.rates), duration=args.warmup)
            wait_settled(stack.bootstrap, stack.worker_groups, args.timeout)
        for index, rate in enumerate(args.rates):
            r = run_rate(stack, admin, sampler, known, rate, args, settings.sink.group_id, index)
            say(f"{rate:g}/s: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, p99.9 {r['p999_ms']} ms,"
                f" max {r['max_ms']} ms; keeps up: {r['keeps_up']}")
            results.append(r)
            wait_settled(stack.bootstrap, stack.worker_groups, args.timeout)
        sampler.close()
        stats = admin.get("/__admin/stats").json()
    finally:
        stack.stop_all()
    summary = [{k: v for k, v in r.items() if k not in ("events", "lag")} for r in results]
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "bench/latency.py " + " ".join(sys.argv[1:]),
        "cores": os.cpu_count(), "load": os.getloadavg(),
        "warmup_s": args.warmup, "warmup_rate": args.warmup_rate,
        "receiver_workers": args.receiver_workers, "sink_processes": args.sink_processes,
        "salesforce_latency_ms": {"before": args.sf_before_ms, "after": args.sf_after_ms},
        "sink_batch_wait_ms": settings.sink.batch_wait_ms, "kafka_linger_ms": settings.kafka.linger_ms,
        "config_set": args.set,
        "salesforce_api_calls": stats["api_calls"],
        "groups": {g: ("sink" if g == settings.sink.group_id else "worker") for g in lag_groups},
        "results": summary,
    }
    print(json.dumps(out))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**out, "runs": results}))


if __name__ == "__main__":
    main()
