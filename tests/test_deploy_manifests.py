"""The deployment files (``deploy/``) are valid and say what the code does.

- Kubernetes: every manifest validates, strictly (no unknown field), against the Kubernetes
  API's JSON schemas of the oldest and the newest version we claim; the schemas come with
  the ``kubernetes-validate`` package (PyPI, pinned), so nothing is downloaded at test time.
  Each workload's selector matches its pods, each probe names a port the container has,
  the probe ports are the ones the ConfigMap's config gives the processes, the
  processes that must run alone (sinks, source) have one replica and ``Recreate``.
- systemd: ``systemd-analyze verify`` finds nothing to say about the units (the binary
  they start replaced by one that exists here).
- Compose: what ``docker compose config`` checks first (no engine needed): services,
  their ``depends_on``, named volumes, files mounted and ``env_file`` present (as its
  ``.example``).
- Every command these files start exists in the CLI and takes ``--config``; every config
  file here validates against ``frontforce/config.py``; the ConfigMap carries the example
  config verbatim.

A test of the tests: a manifest with a misspelt field must fail the validation.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from frontforce.cli import app
from frontforce.config import Settings, parse_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
COMPOSE = DEPLOY / "compose"
K8S_VERSIONS = ("1.29.0", "1.37.0")  # oldest and newest Kubernetes the manifests claim
SECRETS = {"FRONTFORCE_FRONT_APP_SECRET": "s", "FRONTFORCE_FRONT_API_TOKEN": "t",
           "FRONTFORCE_FRONT_COMPANY_ID": "cmp_1", "FRONTFORCE_SF_CLIENT_ID": "c"}
# The processes that must run alone, and their metrics port setting.
SINGLETONS = {"frontforce-sink-salesforce": "sink_salesforce_port",
              "frontforce-sink-front": "sink_front_port",
              "frontforce-source-salesforce": "source_salesforce_port"}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = [*kust["resources"], "secret.example.yaml"]
    out = []
    for name in files:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                out.append((name, doc))
    return out


def settings_from(text: str, monkeypatch: pytest.MonkeyPatch, source: str) -> Settings:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    return parse_settings(text, source)


def configmap_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    cm = next(d for _, d in manifests() if d["kind"] == "ConfigMap")
    return settings_from(cm["data"]["frontforce.yaml"], monkeypatch, "configmap.yaml")


def workloads() -> list[dict[str, Any]]:
    return [d for _, d in manifests() if d["kind"] in ("Deployment", "StatefulSet", "Job")]


# -- Kubernetes ------------------------------------------------------------------------------
def test_every_kubernetes_manifest_validates_strictly_against_the_api_schemas() -> None:
    docs = manifests()
    kinds = sorted({d["kind"] for _, d in docs})
    assert kinds == ["ConfigMap", "Deployment", "Job", "Namespace", "PodDisruptionBudget",
                     "Secret", "Service", "StatefulSet"], kinds
    for version in K8S_VERSIONS:
        for name, doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{name} {doc['kind']} {doc['metadata']['name']} "
                                     f"(Kubernetes {version}): {exc.message} at {list(exc.path)}") from exc


def test_the_validation_catches_a_misspelt_field() -> None:
    """A test of the test: strict validation refuses what an apply would refuse or ignore."""
    worker = copy.deepcopy(next(d for d in workloads() if d["kind"] == "StatefulSet"))
    probe = worker["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    probe["periodSecond"] = probe.pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSIONS[-1], strict=True)
    bad = copy.deepcopy(worker)
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_workloads_select_their_pods_and_probe_ports_they_have(monkeypatch: pytest.MonkeyPatch) -> None:
    s = configmap_settings(monkeypatch)
    ports = {"frontforce-ingest": s.receiver.port, "frontforce-worker": s.metrics.worker_port,
             **{name: getattr(s.metrics, field) for name, field in SINGLETONS.items()}}
    assert s.metrics.host == "0.0.0.0", "probes and Prometheus reach the metrics port from outside the pod"
    assert s.receiver.host == "0.0.0.0", "the Service reaches the receiver from outside the pod"
    for w in workloads():
        name, spec = w["metadata"]["name"], w["spec"]
        pod = spec["template"]
        if w["kind"] != "Job":
            selector = spec["selector"]["matchLabels"]
            assert selector.items() <= pod["metadata"]["labels"].items(), name
        volumes = {v["name"] for v in pod["spec"]["volumes"]}
        claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
            assert {m["name"] for m in c["volumeMounts"]} <= volumes | claims, name
            assert c["envFrom"] == [{"secretRef": {"name": "frontforce"}}], name
            if w["kind"] == "Job":
                continue
            declared = {p["name"]: p["containerPort"] for p in c["ports"]}
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = c[kind]["httpGet"]
                assert probe["port"] in declared, f"{name} {kind}: no port {probe['port']}"
                assert declared[probe["port"]] == ports[name], (
                    f"{name} probes port {declared[probe['port']]}, the config serves it on {ports[name]}")
                assert probe["path"] == ("/healthz" if name == "frontforce-ingest" else "/metrics")
        if name in SINGLETONS:
            assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}, (
                f"{name} must never run twice, not even during a rollout")
    services = [d for _, d in manifests() if d["kind"] == "Service"]
    for svc in services:
        target = next(w for w in workloads() if w["kind"] != "Job" and
                      svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items())
        names = {p["name"] for c in target["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names, svc["metadata"]["name"]
    worker = next(w for w in workloads() if w["kind"] == "StatefulSet")
    assert worker["spec"]["replicas"] <= s.kafka.partitions, "more workers than partitions stand idle"


def test_the_configmap_carries_the_example_config_and_every_config_validates(
        monkeypatch: pytest.MonkeyPatch) -> None:
    example = (DEPLOY / "frontforce.example.yaml").read_text()
    cm = next(d for _, d in manifests() if d["kind"] == "ConfigMap")
    assert cm["data"]["frontforce.yaml"] == example, "configmap.yaml and frontforce.example.yaml differ"
    prod = settings_from(example, monkeypatch, "frontforce.example.yaml")
    assert prod.kafka.replication_factor == 3 and len(prod.kafka.bootstrap_servers.split(",")) == 3
    assert prod.salesforce.auth == "jwt_bearer"
    compose = settings_from((COMPOSE / "frontforce.yaml").read_text(), monkeypatch, "compose/frontforce.yaml")
    assert compose.kafka.bootstrap_servers == "kafka:9092"
    monkeypatch.setenv("FRONTFORCE_WORKER_DATA_DIR", "/var/lib/frontforce/worker-2")
    monkeypatch.setenv("FRONTFORCE_WORKER_METRICS_PORT", "9482")
    two = settings_from(example, monkeypatch, "frontforce.example.yaml")
    assert (str(two.worker.data_dir), two.metrics.worker_port) == ("/var/lib/frontforce/worker-2", 9482)


# -- the commands the files start --------------------------------------------------------------
def started_commands() -> dict[str, list[str]]:
    """Where -> the frontforce arguments it runs (without --config FILE)."""
    out: dict[str, list[str]] = {}
    for unit in sorted(SYSTEMD.glob("*.service")):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                argv = line.split("=", 1)[1].split()
                assert argv[0] == "/opt/frontforce/venv/bin/frontforce", unit.name
                out[f"{unit.name}: {line}"] = argv[1:]
    for w in workloads():
        for c in [*w["spec"]["template"]["spec"].get("initContainers", []),
                  *w["spec"]["template"]["spec"]["containers"]]:
            out[f"kubernetes {w['metadata']['name']}/{c['name']}"] = c["args"]
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        if "command" in svc:
            out[f"compose {name}"] = svc["command"]
    return out


def test_every_command_the_deployment_files_start_exists_and_reads_the_config() -> None:
    commands = started_commands()
    started = {" ".join(a[:2]) if a[0] in ("sink", "source", "config") else a[0] for a in commands.values()}
    assert {"ingest", "worker", "sink salesforce", "sink front", "source salesforce", "setup",
            "config check"} <= started, started
    runner = CliRunner()
    for where, argv in commands.items():
        assert argv[-2:] == ["--config", "/etc/frontforce/frontforce.yaml"], where
        verb = argv[:-2]
        r = runner.invoke(app, [*verb, "--help"])
        assert r.exit_code == 0, f"{where}: `frontforce {' '.join(verb)}` is not a command: {r.output}"
        assert "--config" in r.output, f"{where}: `frontforce {' '.join(verb)}` takes no --config"


# -- systemd -------------------------------------------------------------------------------------
def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    true = shutil.which("true")
    assert true is not None
    for unit in [*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.target")]:
        text = unit.read_text().replace("/opt/frontforce/venv/bin/frontforce", true)
        (tmp_path / unit.name).write_text(text)
    # A template is verified as an instance of it.
    shutil.copy(tmp_path / "frontforce-worker@.service", tmp_path / "frontforce-worker@1.service")
    units = sorted(p.name for p in tmp_path.iterdir() if p.name != "frontforce-worker@.service")
    r = subprocess.run([analyze, "verify", "--man=no", *units], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    said = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert r.returncode == 0 and not said, "\n".join(said)
    # A test of the test: a misspelt key is reported (systemd ignores it, and exits 0).
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "frontforce-bad.service").write_text(
        (tmp_path / "frontforce-ingest.service").read_text().replace("Restart=always", "Restrat=always"))
    r = subprocess.run([analyze, "verify", "--man=no", "frontforce-bad.service"], cwd=bad,
                       capture_output=True, text=True, timeout=120)
    assert "Restrat" in r.stdout + r.stderr
    worker = (tmp_path / "frontforce-worker@1.service").read_text()
    assert "FRONTFORCE_WORKER_DATA_DIR=/var/lib/frontforce/worker-%i" in worker
    for unit in SYSTEMD.glob("frontforce-*.service"):
        text = unit.read_text()
        if "Type=oneshot" not in text:
            assert "Restart=always" in text, f"{unit.name}: a process that exits must come back"


# -- compose -----------------------------------------------------------------------------------
def test_the_compose_file_is_consistent() -> None:
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    services = compose["services"]
    assert {"kafka", "registry", "setup", "ingest", "worker", "sink-salesforce", "sink-front",
            "source-salesforce"} <= set(services)
    named = set(compose.get("volumes") or {})
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        deps = svc.get("depends_on") or {}
        assert set(deps) <= set(services), f"{name} depends on {set(deps) - set(services)}"
        for dep, cond in (deps.items() if isinstance(deps, dict) else []):
            assert cond["condition"] in ("service_started", "service_healthy",
                                         "service_completed_successfully"), name
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health, it has none"
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE / src).exists() or (COMPOSE / src).with_suffix(".example").exists(), (
                    f"{name} mounts {src}, which is not there")
            else:
                assert src in named, f"{name} mounts the undeclared volume {src}"
        if "env_file" in svc:
            assert (COMPOSE / f"{svc['env_file']}.example").exists(), name
        if "build" in svc:
            dockerfile = (COMPOSE / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve()
            assert dockerfile.exists(), dockerfile
    # Every secret the compose config reads (outside comments) is in .env.example.
    live = "\n".join(line for line in (COMPOSE / "frontforce.yaml").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    wanted = set(re.findall(r"\$\{([A-Z_]+)\}", live))
    given = {line.split("=")[0] for line in (COMPOSE / ".env.example").read_text().splitlines()
             if line and not line.startswith("#")}
    assert wanted <= given, wanted - given


def test_the_dockerfile_copies_what_exists() -> None:
    root = DEPLOY.parent
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (root / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
