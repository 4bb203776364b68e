"""``frontforce up`` / ``frontforce down``: the local stack alone, left running for one's
own experiments: Kafka and the registry (``deploy/stack.sh``, as the demo and the tests
start them), the Salesforce and Front emulators as detached processes, the pipeline's
topics and schemas, and a ready-to-use configuration file. No pipeline process is started:
run ``frontforce worker|sink|ingest -c <that file>`` yourself.

Everything lives under one state directory (default ``.run/up``)::

    up.json          ports, the emulators' pids and secrets (mode 0600); what `down` stops
    frontforce.yaml  the configuration for this stack (its secrets are the emulators'
                     throw-away ones, written in the file so it works as is)
    stack/           deploy/stack.sh's FRONTFORCE_STATE (Kafka data, registry, JVM pids)
    salesforce/ front/   the emulators' persisted state
    logs/            the emulators' logs

``up`` is idempotent (what runs is left alone, what is missing is started, on the ports
recorded the first time); ``down`` stops exactly what ``up`` started: the two emulator
pids it recorded (checked to still be those programs) and the JVMs of its own
``stack/`` (stack.sh's pid files).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from frontforce.localstack import REPO, LocalStack, Ports, free_port

DEFAULT_STATE = REPO / ".run" / "up"
EMULATORS = ("salesforce-emulator", "front-emulator")
_PROGRAM = {"salesforce-emulator": "emulators.salesforce", "front-emulator": "emulators.front"}


class UpError(RuntimeError):
    """The stack could not be started or stopped; the message says what and where to look."""


@dataclass
class DetachedStack(LocalStack):
    """A ``LocalStack`` whose emulators outlive this process: own session, output to their
    log file (their ready lines are read back from it), no pipe to a parent that exits."""

    pids: dict[str, int] = field(default_factory=dict)

    def _start_emulator(self, name: str, args: list[str], ready: str) -> re.Match[str]:
        log_path = self.logs / f"{name}.log"
        self._offsets = getattr(self, "_offsets", {})
        self._offsets[name] = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=self.env(), cwd=REPO,
                                    start_new_session=True)
        self.procs[name] = proc
        self.pids[name] = proc.pid
        return self._read_ready(name, ready)

    def _read_ready(self, name: str, ready: str) -> re.Match[str]:
        log_path = self.logs / f"{name}.log"
        proc = self.procs[name]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with log_path.open("rb") as f:
                f.seek(self._offsets[name])
                m = re.search(ready, f.read().decode(errors="replace"))
            if m:
                return m
            if proc.poll() is not None:
                raise UpError(f"{name} exited with {proc.returncode} during start-up:\n"
                              f"{_tail(log_path)}\n(log: {log_path})")
            time.sleep(0.1)
        raise UpError(f"{name} did not say it was ready within 60 s; see {log_path}")


@dataclass
class UpState:
    state_dir: str
    ports: dict[str, int]
    secrets: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)
    ca_file: str | None = None
    started_at: float | None = None

    @classmethod
    def load(cls, state_dir: Path) -> UpState | None:
        path = state_dir / "up.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self) -> None:
        path = Path(self.state_dir) / "up.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)


def _stack(state: UpState) -> DetachedStack:
    d = Path(state.state_dir)
    return DetachedStack(
        state_dir=d, stack_state=d / "stack", ports=Ports(**state.ports), persist=True,
        app_secret=state.secrets["app_secret"], rule_secret=state.secrets["rule_secret"],
        sf_client_secret=state.secrets["sf_client_secret"],
        ca_file=Path(state.ca_file) if state.ca_file else None)


def _new_state(state_dir: Path, free_ports: bool) -> UpState:
    base = LocalStack(state_dir=state_dir)
    ports = (Ports(kafka=free_port(), controller=free_port(), registry=free_port(),
                   salesforce=free_port(), receiver=free_port(), front=free_port(),
                   pubsub=free_port())
             if free_ports else Ports(pubsub=7443))
    return UpState(state_dir=str(state_dir), ports=asdict(ports), secrets={
        "app_secret": base.app_secret, "rule_secret": base.rule_secret,
        "sf_client_secret": base.sf_client_secret})


def is_running(name: str, pid: int, state_dir: Path) -> bool:
    """``pid`` is still the emulator ``up`` started in this state directory (not a pid
    reused by another program since)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return _PROGRAM[name] in args and any(a.startswith(str(state_dir)) for a in args)


def up(state_dir: Path = DEFAULT_STATE, free_ports: bool = False,
       echo: Any = print) -> dict[str, Any]:
    """Start what is not running; return what is where (``describe``)."""
    state_dir = state_dir.resolve()
    state = UpState.load(state_dir) or _new_state(state_dir, free_ports)
    state.save()
    stack = _stack(state)
    try:
        subprocess.run(["bash", str(REPO / "deploy" / "stack.sh"), "start"], env=stack.env(),
                       check=True, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        raise UpError("Kafka or the registry did not start (deploy/stack.sh said why above); "
                      f"logs: {state_dir / 'stack' / 'logs'}") from None
    running = {n: p for n, p in state.pids.items() if is_running(n, p, state_dir)}
    if "salesforce-emulator" in running:
        echo(f"salesforce emulator already running (pid {running['salesforce-emulator']})")
    else:
        # A pid file of ours but no process: the port may still be held by a dying one.
        stack.start_salesforce()
        running["salesforce-emulator"] = stack.pids["salesforce-emulator"]
        state.ca_file = str(stack.ca_file)
        state.ports["pubsub"] = stack.ports.pubsub
    if "front-emulator" in running:
        echo(f"front emulator already running (pid {running['front-emulator']})")
        stack.procs["front-emulator"] = None  # type: ignore[assignment]  # write_config: it runs
    else:
        stack.start_front(context_fields=True)
        running["front-emulator"] = stack.pids["front-emulator"]
    state.pids = running
    state.started_at = state.started_at or time.time()
    state.save()
    config = _write_config(stack)
    from frontforce.config import load_settings
    from frontforce.contracts import Contracts
    from frontforce.kafka import ensure_topics

    settings = load_settings(config)
    ensure_topics(settings)
    Contracts(settings).register()
    return describe(state)


def _write_config(stack: DetachedStack) -> Path:
    """LocalStack's configuration, its ``${…}`` secrets written in (throw-away values of
    local emulators): the file works without an environment."""
    path = stack.write_config()
    values = {"FRONTFORCE_FRONT_APP_SECRET": stack.app_secret,
              "FRONTFORCE_FRONT_RULE_SECRET": stack.rule_secret,
              "FRONTFORCE_SF_CLIENT_SECRET": stack.sf_client_secret,
              "FRONTFORCE_FRONT_API_TOKEN": stack.front_token}
    text = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), path.read_text())
    text = text.replace("# Generated by frontforce's local stack. Secrets come from the environment.",
                        "# Written by `frontforce up` for its local stack (the emulators' throw-away"
                        " secrets are\n# in it); `frontforce down` stops the stack.")
    path.write_text(text)
    path.chmod(0o600)
    return path


def describe(state: UpState) -> dict[str, Any]:
    stack = _stack(state)
    d = Path(state.state_dir)
    return {
        "state_dir": str(d),
        "config": str(d / "frontforce.yaml"),
        "kafka_bootstrap": stack.bootstrap,
        "schema_registry_url": stack.registry_url,
        "salesforce_url": stack.salesforce_url,
        "salesforce_pubsub": stack.pubsub_target,
        "salesforce_ca_file": state.ca_file,
        "salesforce_client_id": stack.sf_client_id,
        "front_url": stack.front_url,
        "front_api_token": stack.front_token,
        "receiver_url": stack.receiver_url,
        "pids": dict(state.pids),
        "logs": {"stack": str(d / "stack" / "logs"), "emulators": str(d / "logs")},
    }


def down(state_dir: Path = DEFAULT_STATE, purge: bool = False, echo: Any = print) -> list[str]:
    """Stop what ``up`` started in ``state_dir``; return what was stopped."""
    state_dir = state_dir.resolve()
    state = UpState.load(state_dir)
    if state is None:
        if purge and state_dir.exists():
            shutil.rmtree(state_dir)
        return []
    stopped: list[str] = []
    for name, pid in list(state.pids.items()):
        if is_running(name, pid, state_dir):
            _terminate(name, pid, state_dir)
            stopped.append(f"{name} (pid {pid})")
        state.pids.pop(name)
    state.save()
    stack = _stack(state)
    before = _stack_pids(state_dir)
    r = subprocess.run(["bash", str(REPO / "deploy" / "stack.sh"), "stop"], env=stack.env(),
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise UpError(f"deploy/stack.sh stop failed:\n{r.stderr}")
    stopped.extend(f"{role} (pid {pid})" for role, pid in before.items())
    if purge:
        shutil.rmtree(state_dir)
    return stopped


def _stack_pids(state_dir: Path) -> dict[str, int]:
    out = {}
    for role in ("registry", "kafka"):
        f = state_dir / "stack" / "run" / f"{role}.pid"
        try:
            pid = int(f.read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        # deploy/stack.sh marks its JVMs -Dfrontforce.stack=<role>@<its state dir>
        if f"-Dfrontforce.stack={role}@{state_dir / 'stack'}".encode() in cmdline.split(b"\0"):
            out[role] = pid
    return out


def _terminate(name: str, pid: int, state_dir: Path, timeout_s: float = 20.0) -> None:
    os.kill(pid, signal.SIGTERM)  # an emulator with --persist saves its state on the way out
    deadline = time.monotonic() + timeout_s
    while is_running(name, pid, state_dir):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.1)


def stack_status(state_dir: Path = DEFAULT_STATE) -> dict[str, bool]:
    """What of ``up``'s stack answers now (for ``up``'s "already up" and the tests)."""
    state = UpState.load(state_dir.resolve())
    if state is None:
        return {}
    out = {n: is_running(n, state.pids.get(n, -1), state_dir.resolve()) for n in EMULATORS}
    out.update({role: True for role in _stack_pids(state_dir.resolve())})
    return out


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


