"""Webhook ingest: signed webhooks a second answered 2xx after Kafka acknowledged them
(acks=all), beside the same receiver answering without producing (the ceiling).

    .venv/bin/python bench/webhook_ingest.py --processes 1 2 4 --duration 20

Starts Kafka and the registry on free ports (throw-away state), creates the topics, then
for each receiver process count, back to back so that both see the same machine:

- ceiling: this file's ``ceiling_app``, the product's receiver app (``create_receiver_app``:
  read, verify the signature, parse, normalize, Avro-encode, log, answer) with a producer
  that answers at once instead of sending to Kafka; served by the product's ``serve``;
- acked: ``frontforce receiver --workers N``, the product as shipped.

Before the measured runs, ``--kafka-warmup`` seconds of acked load, not measured: a freshly
started broker spends about 0.3 of a core compiling (the JVM's C2 thread) in its first minute
of load, which a deployed broker did long ago.

Load: wrk (Debian package, installed with apt-get when missing), ``--connections``
keep-alive connections on one wrk thread, each request one of ``--events`` inbound-message
webhooks signed just before the run (inside Front's 5-minute window), cycled by a Lua
script. wrk counts a status >= 400 as an error; the figure is 2xx answers a second. In the
acked runs the records on ``front.events`` are counted too (they must be at least the 2xx
answers) and sampled every 0.5 s for the throughput-over-time chart. CPU seconds of the
receiver processes and of the Kafka JVM are read from /proc around each run.

Prints one JSON line; ``--out`` keeps the samples for bench/charts.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emulators.front import WebhookEmitter, inbound_email_event  # noqa: E402
from emulators.scenario import people  # noqa: E402
from frontforce.config import Settings  # noqa: E402
from frontforce.localstack import LocalStack, Ports, free_port  # noqa: E402
from sources.front._signature import sign_app_webhook  # noqa: E402

LUA = r"""
-- Cycles through pre-signed webhooks (one per line: timestamp \t signature \t body).
local reqs = {}
local n = 0
local idx = 0
local path = os.getenv("INGEST_REQUESTS")
local url_path = os.getenv("INGEST_PATH") or "/webhooks/front"

init = function(args)
  for line in io.lines(path) do
    local ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
    n = n + 1
    reqs[n] = wrk.format("POST", url_path, {
      ["Content-Type"] = "application/json",
      ["X-Front-Request-Timestamp"] = ts,
      ["X-Front-Signature"] = sig,
    }, body)
  end
  idx = math.random(n)
end

request = function()
  idx = idx % n + 1
  return reqs[idx]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"p999_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class _Acked:
    """What ``AsyncProducer.produce`` returns, for a record that was never sent."""

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return -1


class NullProducer:
    """Answers every produce at once: the receiver without Kafka (the ceiling)."""

    async def produce(self, topic: str, key: bytes | None, value: bytes | None,
                      headers: Any = None) -> _Acked:
        return _Acked(topic)

    def close(self, timeout: float = 10.0) -> int:
        return 0


def ceiling_app(settings: Settings) -> Any:
    """The product's receiver app with ``NullProducer``: verify, normalize, encode, no Kafka."""
    from frontforce.logs import setup, use_privacy
    from frontforce.serialization import Serde
    from sources.front._receiver import create_receiver_app, rare_collections

    setup(os.environ.get("FRONTFORCE_LOG_LEVEL", "INFO"))  # as worker_app: same log cost
    use_privacy(settings.privacy)
    app = create_receiver_app(settings, NullProducer(), Serde(settings))  # type: ignore[arg-type]
    rare_collections()  # as worker_app
    return app


def serve_ceiling(config: Path, workers: int) -> None:
    from frontforce.config import load_settings
    from sources.front._receiver import serve

    serve(load_settings(config), ceiling_app, workers)


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    say("wrk not found: installing the Debian package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk is required: apt-get install wrk")
    return path


def write_requests(path: Path, secret: bytes, events: int) -> None:
    """``events`` inbound-message webhooks, signed now; one per line for the Lua script."""
    senders = people(200, seed=5)
    emitter = WebhookEmitter("http://unused", secret)
    now = time.time()
    ts = str(int(now * 1000))
    with path.open("w") as f:
        for i in range(events):
            ev = inbound_email_event(
                base_url="https://acme.api.frontapp.com", event_id=f"evt_ing{i}",
                conversation_id=f"cnv_ing{i % 500}", message_id=f"msg_ing{i}", inbox_id="inb_1",
                sender=senders[i % len(senders)].email, sender_name=None,
                to="support@acme.example", subject="Benchmark", text="x" * 400, emitted_at=now)
            body = emitter.body_for(ev)
            assert b"\n" not in body and b"\t" not in body
            f.write(f"{ts}\t{sign_app_webhook(secret, ts, body)}\t{body.decode()}\n")
    emitter.close()


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for child in Path(f"/proc/{p}/task/{p}/children").read_text().split():
                todo.append(int(child))
        except OSError:
            pass
    return out


def cpu_s(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def kafka_pid(stack: LocalStack) -> int | None:
    f = (stack.stack_state or stack.state_dir / "stack") / "run" / "kafka.pid"
    try:
        return int(f.read_text().strip())
    except (OSError, ValueError):
        return None


class OffsetSampler:
    """Sum of the end offsets of a topic every ``interval_s`` (records acknowledged)."""

    def __init__(self, bootstrap: str, topic: str, interval_s: float = 0.5) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-ingest-probe"})
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.tps = [TopicPartition(topic, p) for p in parts]
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def total(self) -> int:
        return sum(self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self.tps)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - t0, self.total()))
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def close(self) -> None:
        self.consumer.close()


def start_receiver(stack: LocalStack, mode: str, workers: int) -> subprocess.Popen[bytes]:
    config = stack.state_dir / "frontforce.yaml"
    log = (stack.logs / f"receiver-{mode}-{workers}.log").open("ab")
    if mode == "acked":
        cmd = [sys.executable, "-m", "frontforce", "receiver", "--workers", str(workers),
               "--config", str(config)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-ceiling",
               "--workers", str(workers), "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=stack.env(), cwd=REPO)
    deadline = time.monotonic() + 300  # a busy machine starts interpreters slowly
    url = f"http://127.0.0.1:{stack.ports.receiver}/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{mode} receiver exited with {proc.returncode}; see {stack.logs}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                # every worker up: as many processes as asked (+ the supervisor)
                if workers == 1 or len(descendants(proc.pid)) >= workers + 1:
                    time.sleep(1.0)
                    return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{mode} receiver did not answer; see {stack.logs}")


def stop_receiver(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        for p in reversed(descendants(proc.pid)):
            try:
                os.kill(p, 9)
            except OSError:
                pass
        proc.wait(5)


def run_wrk(wrk: str, stack: LocalStack, requests_file: Path, lua: Path, duration: float,
            connections: int, threads: int) -> dict[str, Any]:
    env = {**os.environ, "INGEST_REQUESTS": str(requests_file)}
    out = subprocess.run(
        [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s",
         "--timeout", "10s", "-s", str(lua), f"http://127.0.0.1:{stack.ports.receiver}"],
        env=env, capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            r: dict[str, Any] = json.loads(line[len("WRK_JSON "):])
            errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
            r["ok"] = r["requests"] - r["status"] - errors
            r["ok_per_s"] = round(r["ok"] / (r["duration_us"] / 1e6), 1)
            return r
    raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")


def one_run(wrk: str, stack: LocalStack, mode: str, workers: int, args: argparse.Namespace,
            lua: Path, topic: str) -> dict[str, Any]:
    proc = start_receiver(stack, mode, workers)
    try:
        requests_file = stack.state_dir / "requests.tsv"
        write_requests(requests_file, stack.app_secret.encode(), args.events)
        # Warm-up: connections, the registry's schema id, the interpreter's caches.
        run_wrk(wrk, stack, requests_file, lua, 3, args.connections, args.threads)
        sampler = OffsetSampler(stack.bootstrap, topic) if mode == "acked" else None
        before = sampler.total() if sampler else 0
        pids = descendants(proc.pid)
        kpid = kafka_pid(stack)
        cpu0, k0, t0 = cpu_s(pids), cpu_s([kpid] if kpid else []), time.monotonic()
        if sampler:
            sampler.start()
        r = run_wrk(wrk, stack, requests_file, lua, args.duration, args.connections, args.threads)
        wall = time.monotonic() - t0
        cpu1, k1 = cpu_s(pids), cpu_s([kpid] if kpid else [])
        r.update({"mode": mode, "processes": workers,
                  "receiver_cpu_cores": round((cpu1 - cpu0) / wall, 2),
                  "kafka_cpu_cores": round((k1 - k0) / wall, 2),
                  "receiver_cpu_us_per_ok": round((cpu1 - cpu0) / max(r["ok"], 1) * 1e6, 1)})
        if sampler:
            time.sleep(0.6)
            sampler.stop()
            stored = sampler.total() - before
            r["records_on_kafka"] = stored
            r["series"] = [(round(t, 2), n - before) for t, n in sampler.samples]
            sampler.close()
            if stored < r["ok"]:
                raise RuntimeError(f"{r['ok']} answered 2xx but only {stored} records on {topic}")
        say(f"{mode:8} x{workers}: {r['ok_per_s']:8.1f} 2xx/s  p50 {r['p50_us'] / 1000:.1f} ms  "
            f"p99 {r['p99_us'] / 1000:.1f} ms  non-2xx {r['status']}  "
            f"receiver {r['receiver_cpu_cores']} cores, kafka {r['kafka_cpu_cores']} cores")
        return r
    finally:
        stop_receiver(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4],
                    help="receiver process counts to measure")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load per run")
    ap.add_argument("--kafka-warmup", type=float, default=30.0,
                    help="seconds of acked load before the measured runs, not measured (0: none)")
    ap.add_argument("--connections", type=int, default=256,
                    help="wrk keep-alive connections (64 capped the acked runs near 3,800/s: each"
                    " waits for its answer, ~16 ms with the ack)")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--events", type=int, default=2000, help="distinct signed webhooks cycled")
    ap.add_argument("--modes", nargs="+", default=["ceiling", "acked"],
                    choices=["ceiling", "acked"])
    ap.add_argument("--out", type=Path, default=None, help="JSON with the samples (for charts)")
    ap.add_argument("--serve-ceiling", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_ceiling:
        serve_ceiling(args.config, args.workers)
        return
    wrk = ensure_wrk()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on the way out
    state = Path(tempfile.mkdtemp(prefix="ff-bench-ingest-"))
    stack = LocalStack(state_dir=state, ports=Ports(
        kafka=free_port(), controller=free_port(), registry=free_port(),
        salesforce=free_port(), receiver=free_port()), persist=False)
    lua = state / "ingest.lua"
    lua.write_text(LUA)
    runs: list[dict[str, Any]] = []
    try:
        say(f"state in {state}; starting Kafka and the registry")
        stack.start_infra()
        stack.start_salesforce()  # only for the generated config (its CA); not used
        stack.write_config()
        stack.stop_process("salesforce-emulator")
        stack.frontforce("setup")
        topic = stack.settings().topics.front_events
        if args.kafka_warmup > 0 and "acked" in args.modes:
            # A freshly started broker spends about 0.3 of a core in its first minute of load
            # compiling (the JVM's C2 thread): the acked runs measure a warm broker, as deployed.
            say(f"warm-up, not measured: acked x{max(args.processes)} for {args.kafka_warmup:g} s")
            warm = start_receiver(stack, "acked", max(args.processes))
            try:
                requests_file = stack.state_dir / "requests.tsv"
                write_requests(requests_file, stack.app_secret.encode(), args.events)
                run_wrk(wrk, stack, requests_file, lua, args.kafka_warmup, args.connections, args.threads)
            finally:
                stop_receiver(warm)
        for n in args.processes:
            for mode in args.modes:
                runs.append(one_run(wrk, stack, mode, n, args, lua, topic))
    finally:
        stack.stop_all()
    table = []
    for n in args.processes:
        by = {r["mode"]: r for r in runs if r["processes"] == n}
        row: dict[str, Any] = {"processes": n}
        for mode, r in by.items():
            row[f"{mode}_per_s"] = r["ok_per_s"]
            row[f"{mode}_p50_ms"] = round(r["p50_us"] / 1000, 1)
            row[f"{mode}_p99_ms"] = round(r["p99_us"] / 1000, 1)
            row[f"{mode}_non_2xx"] = r["status"]
            row[f"{mode}_receiver_cpu_us_per_request"] = r["receiver_cpu_us_per_ok"]
        if "acked" in by and "ceiling" in by:
            row["share_of_ceiling"] = round(by["acked"]["ok_per_s"] / by["ceiling"]["ok_per_s"], 3)
        table.append(row)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "bench/webhook_ingest.py " + " ".join(sys.argv[1:]),
        "cores": os.cpu_count(), "load": os.getloadavg(),
        "duration_s": args.duration, "kafka_warmup_s": args.kafka_warmup,
        "connections": args.connections, "wrk_threads": args.threads,
        "results": table,
    }
    print(json.dumps(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**result, "runs": runs}))


if __name__ == "__main__":
    main()
