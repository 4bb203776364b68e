"""Schema contracts: register, check and diff the local ``schemas/`` against the registry,
and explain an incompatibility in plain words.

Compatibility is FULL_TRANSITIVE, not the BACKWARD_TRANSITIVE the design first named: our
topics are read by tools we do not deploy (and, during a rolling upgrade, by our own older
workers), so old readers must read new records (forward) as well as new readers old records
(backward), against every earlier version. In practice: add or remove only fields that have
a default.

Command topics (``commands.salesforce``, ``commands.front``) are BACKWARD_TRANSITIVE
instead: they are read by our own sinks only, and a new command kind is a new branch of the
``operation`` union, which no older reader can read (Avro has no union default). The rule
that keeps them safe is the deployment order: **sinks first, then workers** — a sink reads
every command an older worker wrote, and a worker that writes a new kind runs only once the
sinks know it.

The registry's verdict is authoritative; the explanation is ours, from Avro's resolution
rules, because a registry says only "incompatible".
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro.schema import expand_schema, parse_schema

from frontforce.config import Settings
from frontforce.serialization import registry_client
from schemas import COMMAND_TOPICS, SCHEMA_FILES, WORKER_SCHEMA_FILES, load_schema_str

COMPATIBILITY = "FULL_TRANSITIVE"
COMMAND_COMPATIBILITY = "BACKWARD_TRANSITIVE"


def compatibility(logical: str) -> str:
    """The registry's compatibility level for a logical topic's subject."""
    return COMMAND_COMPATIBILITY if logical in COMMAND_TOPICS else COMPATIBILITY

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
    "boolean": {"boolean"},
    "null": {"null"},
}


def _expanded(schema: str | dict[str, Any]) -> Any:
    parsed = json.loads(schema) if isinstance(schema, str) else schema
    return expand_schema(parse_schema(parsed, _write_hint=False))


def _kind(t: Any) -> str:
    if isinstance(t, list):
        return "union"
    if isinstance(t, dict):
        return str(t["type"])
    return str(t)


def _name(t: Any) -> str:
    if isinstance(t, dict) and "name" in t:
        return str(t["name"]).rsplit(".", 1)[-1]
    if isinstance(t, dict):
        return _name(t["type"]) if not isinstance(t["type"], str) else t["type"]
    return _kind(t)


def _describe(t: Any) -> str:
    k = _kind(t)
    if k == "union":
        return " | ".join(_describe(b) for b in t)
    if k in ("record", "enum", "fixed"):
        return f"{k} {_name(t)}"
    if k == "array":
        return f"array<{_describe(t['items'])}>"
    if k == "map":
        return f"map<{_describe(t['values'])}>"
    return k


def resolution_problems(writer: Any, reader: Any, path: str = "") -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty: it can)."""
    wk, rk = _kind(writer), _kind(reader)
    where = path or "(top level)"
    if wk == "union":
        out: list[str] = []
        for branch in writer:
            out += resolution_problems(branch, reader, path)
        return out
    if rk == "union":
        for branch in reader:
            if not resolution_problems(writer, branch, path):
                return []
        return [f"{where}: a value written as {_describe(writer)} has no matching branch in "
                f"{_describe(reader)}"]
    if wk in _PROMOTIONS or rk in _PROMOTIONS:
        base_w = writer["type"] if isinstance(writer, dict) and wk in _PROMOTIONS else wk
        base_r = reader["type"] if isinstance(reader, dict) and rk in _PROMOTIONS else rk
        if base_r in _PROMOTIONS.get(base_w, set()):
            return []
        return [f"{where}: type changed from {_describe(writer)} to {_describe(reader)}, "
                "which Avro cannot convert"]
    if wk != rk:
        return [f"{where}: type changed from {_describe(writer)} to {_describe(reader)}"]
    if wk == "record":
        out = []
        wfields = {f["name"]: f for f in writer["fields"]}
        for rf in reader["fields"]:
            fpath = f"{path}.{rf['name']}" if path else rf["name"]
            if rf["name"] in wfields:
                out += resolution_problems(wfields[rf["name"]]["type"], rf["type"], fpath)
            elif "default" not in rf:
                out.append(f"{fpath}: the reading schema has this field, the writing schema does "
                           "not, and it has no default")
        return out
    if wk == "enum":
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            return [f"{where}: enum symbols {missing} are unknown to the reading schema, which "
                    "has no enum default"]
        return []
    if wk == "array":
        return resolution_problems(writer["items"], reader["items"], f"{path}[]")
    if wk == "map":
        return resolution_problems(writer["values"], reader["values"], f"{path}{{}}")
    if wk == "fixed" and writer.get("size") != reader.get("size"):
        return [f"{where}: fixed size changed from {writer.get('size')} to {reader.get('size')}"]
    return []


def explain(old: str, new: str, level: str = COMPATIBILITY) -> list[str]:
    """Plain-words reasons why ``new`` is not compatible with ``old`` at ``level`` (FULL:
    both directions; BACKWARD: new readers of old records only)."""
    o, n = _expanded(old), _expanded(new)
    backward = [f"new readers cannot read old records: {p}" for p in resolution_problems(o, n)]
    if level.startswith("BACKWARD"):
        return backward
    return backward + [f"old readers cannot read new records: {p}" for p in resolution_problems(n, o)]


@dataclass
class SubjectReport:
    subject: str
    status: str  # new | unchanged | compatible | incompatible
    registry_says_compatible: bool | None = None
    reasons: list[str] = field(default_factory=list)


class Contracts:
    def __init__(self, settings: Settings, registry: SchemaRegistryClient | None = None,
                 schemas_dir: Path | None = None) -> None:
        self.registry = registry or registry_client(settings.kafka.schema_registry_url)
        prefix = settings.kafka.topic_prefix
        self.subjects = {f"{prefix}{logical}-value": logical for logical in SCHEMA_FILES}
        worker = {**settings.worker_topics, **settings.worker_table_topics}
        self.subjects.update({f"{worker[k]}-value": k for k in WORKER_SCHEMA_FILES})
        # A different folder of .avsc files (a branch's, a proposed change) instead of ours.
        self.schemas_dir = schemas_dir

    def local(self, subject: str) -> str:
        logical = self.subjects[subject]
        if self.schemas_dir is not None:
            return (self.schemas_dir / _file(logical)).read_text(encoding="utf-8")
        return load_schema_str(logical)

    def _versions(self, subject: str) -> list[tuple[int, str]]:
        try:
            versions = self.registry.get_versions(subject)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return []
            raise
        return [(v, str(self.registry.get_version(subject, v).schema.schema_str)) for v in versions]

    def register(self) -> dict[str, int]:
        ids = {}
        for subject in self.subjects:
            self.registry.set_compatibility(subject, level=compatibility(self.subjects[subject]))
            ids[subject] = self.registry.register_schema(subject, Schema(self.local(subject), "AVRO"))
        return ids

    def check(self) -> list[SubjectReport]:
        reports = []
        for subject in self.subjects:
            local = self.local(subject)
            versions = self._versions(subject)
            if not versions:
                reports.append(SubjectReport(subject, "new"))
                continue
            level = compatibility(self.subjects[subject])
            reasons = [f"against version {v}: {r}" for v, old in versions
                       for r in explain(old, local, level)]
            verdict = bool(self.registry.test_compatibility(subject, Schema(local, "AVRO")))
            if _same(versions[-1][1], local):
                status = "unchanged"
            else:
                status = "compatible" if verdict and not reasons else "incompatible"
            if not verdict and not reasons:
                reasons = ["the registry refuses it (it gave no detail)"]
            reports.append(SubjectReport(subject, status, verdict, reasons if status == "incompatible" else []))
        return reports

    def diff(self) -> dict[str, str]:
        out = {}
        for subject in self.subjects:
            versions = self._versions(subject)
            old = _pretty(versions[-1][1]) if versions else ""
            new = _pretty(self.local(subject))
            label = f"{subject} v{versions[-1][0]}" if versions else f"{subject} (not registered)"
            out[subject] = "".join(difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True),
                fromfile=f"registry: {label}", tofile=f"local: schemas/{_file(self.subjects[subject])}"))
        return out


def _file(logical: str) -> str:
    return SCHEMA_FILES.get(logical) or WORKER_SCHEMA_FILES[logical]


def _pretty(schema: str) -> str:
    return json.dumps(json.loads(schema), indent=2) + "\n"


def _same(a: str, b: str) -> bool:
    return bool(json.loads(a) == json.loads(b))
