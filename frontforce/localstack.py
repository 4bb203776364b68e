"""Start and stop the local stack as child processes: Kafka and the registry (through
deploy/stack.sh), the Salesforce emulator, and the pipeline's own processes. Used by
``frontforce demo`` and by the test suite.

The product never imports the emulators: they are started as separate programs
(``python -m emulators.salesforce``), exactly as a user would start them.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from frontforce.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
STACK_SH = REPO / "deploy" / "stack.sh"


# Ports for the local stack's listeners come from below the kernel's range for outgoing
# connections (Linux: 32768-60999). A port the kernel picked for ``bind(0)`` lies in that
# range, so between the pick and the listener's own bind (seconds, for a JVM) any client
# connection could take it: the test suite's stacks saw a listener fail to bind this way.
# Processes running side by side (pytest-xdist workers, ``frontforce up`` from a test)
# claim a port with a file made with O_EXCL, so two of them never hand out the same one.
_PORT_RANGE = (20000, 32000)
_CLAIM_TTL_S = 900.0
_CLAIMS = Path(os.environ.get("TMPDIR", "/tmp")) / "frontforce-ports"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _claim(port: int) -> bool:
    path = _CLAIMS / str(port)
    for _ in range(2):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return True
        except FileExistsError:
            try:
                if time.time() - path.stat().st_mtime < _CLAIM_TTL_S:
                    return False
                path.unlink()  # an old claim: its stack is long gone or bound by now
            except FileNotFoundError:
                pass
        except OSError:
            return True  # no claim directory to write to: the bind check alone decides
    return False


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, nor will be handed out again here
    or in another process for a while; outside the range of outgoing connections."""
    low, high = _PORT_RANGE
    high = min(high, _ephemeral_low())
    if high - low < 1000:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    try:
        _CLAIMS.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    rng = secrets.SystemRandom()
    for _ in range(4 * (high - low)):
        port = rng.randrange(low, high)
        if _bindable(port) and _claim(port):
            return port
    raise RuntimeError(f"no free port left between {low} and {high}")


@dataclass
class Ports:
    kafka: int = 9092
    controller: int = 9093
    registry: int = 8081
    salesforce: int = 8443
    receiver: int = 8090
    front: int = 8095
    # Salesforce Pub/Sub API (gRPC) of the emulator; 0: a free port, read back from its
    # ready line (then the real port is stored here).
    pubsub: int = 0


@dataclass
class LocalStack:
    state_dir: Path
    ports: Ports = field(default_factory=Ports)
    topic_prefix: str = ""
    app_id: str = "frontforce"
    persist: bool = True
    app_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    rule_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    sf_client_id: str = "frontforce-demo"
    sf_client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # The Front emulator's default API token (emulators/front DEFAULT_TOKEN).
    front_token: str = "front-emulator-token"
    # More options for the Salesforce emulator (e.g. the JWT bearer flow's public key).
    sf_extra_args: tuple[str, ...] = ()
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ca_file: Path | None = None
    # Seconds without events before the emulator's Pub/Sub API sends a keepalive (Salesforce:
    # up to 270 s). Short here: a load's hand-over waits for the first answer.
    pubsub_keepalive_s: float = 1.0
    # Where deploy/stack.sh keeps broker/registry data; several pipelines (tests) may share
    # one infrastructure while each has its own state_dir.
    stack_state: Path | None = None
    # More Kafka nodes (a KRaft cluster on loopback, deploy/stack.sh KAFKA_NODES): each
    # one's listener and controller port, beside ``ports.kafka`` and ``ports.controller``.
    kafka_extra: tuple[int, ...] = ()
    controller_extra: tuple[int, ...] = ()

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in (self.ports.kafka, *self.kafka_extra))

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.registry}/apis/ccompat/v7"

    @property
    def salesforce_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.salesforce}"

    @property
    def pubsub_target(self) -> str:
        return f"127.0.0.1:{self.ports.pubsub}"

    @property
    def receiver_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.receiver}/webhooks/front"

    @property
    def logs(self) -> Path:
        p = self.state_dir / "logs"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "FRONTFORCE_STATE": str(self.stack_state or self.state_dir / "stack"),
            "KAFKA_PORT": str(self.ports.kafka),
            "KAFKA_CONTROLLER_PORT": str(self.ports.controller),
            "REGISTRY_PORT": str(self.ports.registry),
            "FRONTFORCE_FRONT_APP_SECRET": self.app_secret,
            "FRONTFORCE_FRONT_RULE_SECRET": self.rule_secret,
            "FRONTFORCE_SF_CLIENT_SECRET": self.sf_client_secret,
            "FRONTFORCE_FRONT_API_TOKEN": self.front_token,
        })
        if self.kafka_extra:
            assert len(self.kafka_extra) == len(self.controller_extra)
            env.update({
                "KAFKA_NODES": str(1 + len(self.kafka_extra)),
                "KAFKA_PORTS": ",".join(map(str, (self.ports.kafka, *self.kafka_extra))),
                "KAFKA_CONTROLLER_PORTS": ",".join(
                    map(str, (self.ports.controller, *self.controller_extra))),
            })
        return env

    # -- infrastructure --------------------------------------------------------------
    def start_infra(self, kafka_only: bool = False) -> None:
        env = self.env()
        if kafka_only:
            env["FRONTFORCE_KAFKA_ONLY"] = "1"
        subprocess.run(["bash", str(STACK_SH), "start"], env=env, check=True)

    def stop_infra(self) -> None:
        subprocess.run(["bash", str(STACK_SH), "stop"], env=self.env(), check=False)

    def start_salesforce(self) -> None:
        args = [sys.executable, "-m", "emulators.salesforce", "--host", "127.0.0.1",
                "--port", str(self.ports.salesforce), "--state-dir",
                str(self.state_dir / "salesforce"), f"--client-id={self.sf_client_id}",
                # '=' form: a random secret may start with '-'
                f"--client-secret={self.sf_client_secret}",
                "--pubsub-port", str(self.ports.pubsub),
                "--pubsub-keepalive", str(self.pubsub_keepalive_s)]
        if self.persist:
            args.append("--persist")
        args.extend(self.sf_extra_args)
        m = self._start_emulator("salesforce-emulator", args, r"ready on (\S+) \(ca: ([^)]+)\)")
        self.ca_file = Path(m.group(2))
        # The Pub/Sub API announces itself on the next line.
        pubsub = self._read_ready("salesforce-emulator", r"pubsub api ready on \S+:(\d+)")
        self.ports.pubsub = int(pubsub.group(1))

    @property
    def front_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.front}"

    def start_front(self, context_fields: bool = False) -> None:
        """The Front emulator; ``context_fields``: with the custom fields the worker's default
        ``context_fields`` write (use case 3), as a Front admin would define them."""
        args = [sys.executable, "-m", "emulators.front", "--host", "127.0.0.1",
                "--port", str(self.ports.front), "--state-dir", str(self.state_dir / "front")]
        if self.persist:
            args.append("--persist")
        self._start_emulator("front-emulator", args, r"front emulator ready on (\S+)")
        if not context_fields:
            return
        fields = [{"name": "ARR", "type": "number"}, {"name": "Tier", "type": "string"},
                  {"name": "Account owner", "type": "string"},
                  {"name": "Open opportunities", "type": "string"}]
        r = httpx.post(f"{self.front_url}/__admin/seed", timeout=30, json={"custom_fields": {
            "account": fields,
            "contact": [*fields, {"name": "Salesforce account", "type": "string"}]}})
        if r.status_code != 200 and "exists" not in r.text:  # a persisted emulator has them
            raise RuntimeError(f"front emulator refused the custom fields: {r.text}")

    def _start_emulator(self, name: str, args: list[str], ready: str) -> re.Match[str]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=self.env(), cwd=REPO)
        self.procs[name] = proc
        return self._read_ready(name, ready)

    def _read_ready(self, name: str, ready: str) -> re.Match[str]:
        proc = self.procs[name]
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if not line:
                break
            m = re.search(ready, line)
            if m:
                return m
        raise RuntimeError(f"{name} did not start; see {self.logs}")

    # -- pipeline ----------------------------------------------------------------------
    def _replication_line(self) -> str:
        """A cluster's topics get 3 replicas (deploy/stack.sh: min.insync.replicas=2)."""
        nodes = 1 + len(self.kafka_extra)
        return f"\n  replication_factor: {min(3, nodes)}" if nodes > 1 else ""

    def write_config(self) -> Path:
        assert self.ca_file is not None, "start the Salesforce emulator first"
        path = self.state_dir / "frontforce.yaml"
        # The Front API (gap-fill, backfill, the Front sink) is the emulator's when it runs.
        front_api = (f'\n  api_url: "{self.front_url}"\n  api_token: "${{FRONTFORCE_FRONT_API_TOKEN}}"'
                     if "front-emulator" in self.procs else "")
        path.write_text(f"""\
# Generated by frontforce's local stack. Secrets come from the environment.
kafka:
  bootstrap_servers: "{self.bootstrap}"
  schema_registry_url: "{self.registry_url}"
  topic_prefix: "{self.topic_prefix}"
  partitions: 3{self._replication_line()}
front:
  app_secret: "${{FRONTFORCE_FRONT_APP_SECRET}}"
  rule_secret: "${{FRONTFORCE_FRONT_RULE_SECRET}}"{front_api}
receiver:
  port: {self.ports.receiver}
salesforce:
  login_url: "{self.salesforce_url}"
  client_id: "{self.sf_client_id}"
  client_secret: "${{FRONTFORCE_SF_CLIENT_SECRET}}"
  ca_bundle: "{self.ca_file}"
salesforce_source:
  pubsub_url: "{self.pubsub_target}"
worker:
  app_id: "{self.app_id}"
  data_dir: "{self.state_dir / 'worker'}"
  salesforce_web_url: "{self.salesforce_url}"
  unmatched_wait_s: 8
  waiting_purge_s: 10
  all_participants: true
  # The conversation's Front custom field "Priority" (High/Normal/Low) on each Task.
  task_fields_from_front:
    Priority: Priority
  tag_rules:
    "Renewal Risk":
      follow_up_task: "Call the customer about the renewal risk"
      chatter_note: "Renewal risk flagged in Front"
    "Upsell":
      opportunity_stage: "Proposal/Price Quote"
      on_untag: revert
privacy:
  # Personal mobile numbers stay out of Salesforce: a new phone seen in Front fills a
  # Contact's Phone only (use case 2), never its MobilePhone.
  exclude_fields:
    Contact: [MobilePhone]
sink:
  group_id: "{self.app_id}-sink-salesforce"
front_sink:
  group_id: "{self.app_id}-sink-front"
""")
        return path

    def settings(self) -> Settings:
        """The pipeline's settings as its processes see them (secrets from our env)."""
        os.environ["FRONTFORCE_FRONT_APP_SECRET"] = self.app_secret
        os.environ["FRONTFORCE_FRONT_RULE_SECRET"] = self.rule_secret
        os.environ["FRONTFORCE_SF_CLIENT_SECRET"] = self.sf_client_secret
        os.environ["FRONTFORCE_FRONT_API_TOKEN"] = self.front_token
        return load_settings(self.state_dir / "frontforce.yaml")

    def frontforce(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "frontforce", *args,
                               "--config", str(self.state_dir / "frontforce.yaml")],
                              env=self.env(), cwd=REPO, check=check, text=True,
                              capture_output=True)

    def spawn(self, name: str, *args: str, module: str = "frontforce") -> subprocess.Popen[bytes]:
        """Start ``python -m <module> <args> --config <this stack's file>`` as ``name``
        (``module``: another entry point with the same CLI, e.g. a test's variant)."""
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args,
             "--config", str(self.state_dir / "frontforce.yaml")],
            stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=REPO)
        self.procs[name] = proc
        return proc

    def start_pipeline(self) -> None:
        """Worker, Salesforce sink, Salesforce change subscription (after a load: from the
        replay id the load took), the Front sink when the Front emulator runs, receiver."""
        self.spawn("worker", "worker")
        self.spawn("sink-salesforce", "sink", "salesforce")
        self.spawn("source-salesforce", "source", "salesforce")
        if "front-emulator" in self.procs:
            self.spawn("sink-front", "sink", "front")
        self.spawn("receiver", "receiver")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.ports.receiver}/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.logs}")
            time.sleep(0.3)
        raise RuntimeError(f"receiver did not answer; see {self.logs}")

    def stop_process(self, name: str, timeout: float = 20.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop_all(self, infra: bool = True) -> None:
        # Order: stop taking input first, then the stages downstream of it.
        for name in ["receiver", "source-salesforce", "worker", "sink-salesforce", "sink-front",
                     *list(self.procs)]:
            self.stop_process(name)
        if infra:
            self.stop_infra()

    @property
    def worker_groups(self) -> dict[str, list[str]]:
        p, a = self.topic_prefix, self.app_id
        return {
            a: [f"{p}salesforce.changes", f"{a}-match-keys", f"{a}-front-by-handle",
                f"{a}-front-case-events"],
            # The worker's fast lane reads front.events in a group of its own.
            f"{a}-front-events": [f"{p}front.events"],
            f"{a}-sink-salesforce": [f"{p}commands.salesforce"],
            **({f"{a}-sink-front": [f"{p}commands.front"]} if "front-emulator" in self.procs else {}),
        }
