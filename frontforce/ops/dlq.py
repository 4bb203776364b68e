"""``frontforce dlq list | show | redrive``: the dead-letter topic, read and re-driven.

A dead letter (``schemas/deadletter.avsc``, written by the worker and both sinks) keeps the
original key and value bytes and where they came from. Its id here is its own place on the
dead-letter topic, ``partition@offset``: stable, unique, and what an operator copies from
``list`` into ``show`` or ``redrive``.

Re-driving sends the original key and value, unchanged, back to the original topic (the
stage that gave up reads them again once the cause is fixed: a mapping, a missing record, a
deactivated picklist value). Each dead letter is re-driven ONCE, however often ``redrive``
runs or whoever runs it, and the record of it lives in Kafka, next to what it is about:

- every re-drive writes a marker on the compacted topic ``<deadletter>.redriven`` (one
  partition, key = the dead letter's id, value ``schemas/deadletter_redrive.avsc``: where
  the copy landed, who, when);
- the copy and its marker are written in ONE Kafka transaction: both or neither, so a crash
  or a refused commit can neither lose a re-drive (marker without copy) nor repeat one (copy
  without marker);
- the transactional id is fixed per dead-letter topic (``frontforce-dlq-redrive-<topic>``):
  a second ``redrive`` (another terminal, the status page) fences the first when it starts
  (the broker aborts the first one's open transaction and refuses its commit), and only
  then reads the markers with ``read_committed``: it sees every re-drive that committed and
  none that can still commit.

Why a marker topic rather than a consumer group of its own: a group's committed offset says
"everything before this offset", and ``redrive --id``/``--reason`` picks dead letters out of
order; a compacted topic keyed by id records any subset, for as long as the dead letters
are kept, and anyone can read it (kcat, the status page). A dead letter that fails again
after its re-drive is a NEW dead letter (new id, new reason): re-driving it again is a
deliberate second attempt, not a repeat.
"""

from __future__ import annotations

import base64
import getpass
import json
import re
import socket
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import structlog
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from frontforce.config import Settings
from frontforce.errors import FatalError, InvalidRecordError, RetriableError
from frontforce.kafka import ensure_topics, producer_config, read_to_end
from frontforce.serialization import Serde

log = structlog.get_logger("frontforce.dlq")

# Header the re-driven copy carries: which dead letter it is (kcat shows it; nothing in the
# pipeline reads it).
REDRIVE_HEADER = "frontforce-redrive-of"
_ID = re.compile(r"^(\d+)@(\d+)$")


@dataclass(frozen=True)
class Redriven:
    """A marker: the dead letter was sent back, where its copy landed, by whom, when."""

    topic: str
    partition: int
    offset: int
    by: str
    at_ms: int


@dataclass
class DeadLetter:
    id: str  # partition@offset on the dead-letter topic
    partition: int
    offset: int
    original_topic: str
    original_partition: int
    original_offset: int
    original_key: bytes | None
    original_value: bytes | None
    stage: str
    error_class: str
    error_message: str
    attempts: int
    at_ms: int
    redriven: Redriven | None = None

    @property
    def reason(self) -> str:
        return f"{self.error_class}: {self.error_message}"

    @property
    def origin(self) -> str:
        return f"{self.original_topic}[{self.original_partition}]@{self.original_offset}"

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (now if now is not None else time.time()) - self.at_ms / 1000.0)

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """What ``list`` and the status page show of it (JSON-safe)."""
        return {"id": self.id, "stage": self.stage, "reason": self.reason,
                "original": self.origin, "original_topic": self.original_topic,
                "age_s": round(self.age_s(now), 1), "age": age_text(self.age_s(now)),
                "attempts": self.attempts,
                "redriven": (None if self.redriven is None else
                             {"to": f"{self.redriven.topic}[{self.redriven.partition}]@"
                                    f"{self.redriven.offset}",
                              "by": self.redriven.by, "at_ms": self.redriven.at_ms})}


@dataclass
class RedriveReport:
    """What one ``redrive`` did, each dead letter once: sent (id -> where the copy landed),
    already re-driven before (id -> where), skipped with a reason, unknown ids."""

    sent: dict[str, str] = field(default_factory=dict)
    already: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"re-driven {i} -> {where}" for i, where in self.sent.items()]
        out += [f"already re-driven {i} -> {where}: not sent again" for i, where in self.already.items()]
        out += [f"skipped {i}: {why}" for i, why in self.skipped.items()]
        out += [f"unknown id {i}" for i in self.unknown]
        out.append(f"{len(self.sent)} re-driven, {len(self.already)} already re-driven, "
                   f"{len(self.skipped)} skipped, {len(self.unknown)} unknown")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "already": self.already, "skipped": self.skipped,
                "unknown": self.unknown}


def age_text(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def parse_id(text: str) -> tuple[int, int]:
    """``partition@offset`` -> (partition, offset); ``ValueError`` otherwise."""
    m = _ID.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a dead-letter id (partition@offset, as `dlq list` shows)")
    return int(m.group(1)), int(m.group(2))


def _millis(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def redriven_markers(settings: Settings, serde: Serde | None = None,
                     timeout_s: float = 30.0) -> dict[str, Redriven]:
    """Dead-letter id -> its re-drive, from ``<deadletter>.redriven`` (latest per key)."""
    serde = serde or Serde(settings)
    topic = settings.topics.deadletter_redriven
    out: dict[str, Redriven] = {}
    for m in read_to_end(settings.kafka.bootstrap_servers, topic, timeout_s):
        key = (m.key() or b"").decode("utf-8", "replace")
        if m.value() is None:
            out.pop(key, None)
            continue
        try:
            v = serde.decode(topic, m.value())
        except InvalidRecordError as exc:
            log.warning("unreadable re-drive marker", key=key, error=str(exc))
            continue
        out[key] = Redriven(v["original_topic"], int(v["redriven_partition"]),
                            int(v["redriven_offset"]), str(v["by"]), _millis(v["at"]))
    return out


def _dead_letter(serde: Serde, topic: str, m: Message) -> DeadLetter:
    partition, offset = int(m.partition() or 0), int(m.offset() or 0)
    try:
        v = serde.decode(topic, m.value())
    except InvalidRecordError as exc:
        # Not one of ours (someone produced by hand): listed, never re-driven.
        return DeadLetter(f"{partition}@{offset}", partition, offset, "", -1, -1, m.key(),
                          m.value(), "unreadable", type(exc).__name__, str(exc), 0,
                          int((m.timestamp() or (0, 0))[1]))
    return DeadLetter(
        id=f"{partition}@{offset}", partition=partition, offset=offset,
        original_topic=str(v["original_topic"]), original_partition=int(v["original_partition"]),
        original_offset=int(v["original_offset"]), original_key=v.get("original_key"),
        original_value=v.get("original_value"), stage=str(v["stage"]),
        error_class=str(v["error_class"]), error_message=str(v["error_message"]),
        attempts=int(v.get("attempts") or 1), at_ms=_millis(v["at"]))


def list_dead_letters(settings: Settings, serde: Serde | None = None,
                      timeout_s: float = 30.0) -> list[DeadLetter]:
    """Every dead letter up to the end of the topic as of now, oldest first, each with its
    re-drive when it had one."""
    serde = serde or Serde(settings)
    topic = settings.topics.deadletter
    markers = redriven_markers(settings, serde, timeout_s)
    out = [_dead_letter(serde, topic, m)
           for m in read_to_end(settings.kafka.bootstrap_servers, topic, timeout_s)]
    for d in out:
        d.redriven = markers.get(d.id)
    out.sort(key=lambda d: (d.at_ms, d.partition, d.offset))
    return out


def find(settings: Settings, dead_letter_id: str, serde: Serde | None = None) -> DeadLetter | None:
    parse_id(dead_letter_id)
    return next((d for d in list_dead_letters(settings, serde) if d.id == dead_letter_id.strip()), None)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return _bytes(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _bytes(data: bytes | None) -> dict[str, Any] | None:
    """Bytes as text when they are UTF-8 (JSON when they parse), else hex and base64."""
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return {"encoding": "binary", "length": len(data), "hex": data.hex(),
                "base64": base64.b64encode(data).decode()}
    try:
        return {"encoding": "json", "value": json.loads(text)}
    except ValueError:
        return {"encoding": "utf-8", "value": text}


def describe(d: DeadLetter, serde: Serde, deadletter_topic: str) -> dict[str, Any]:
    """The full dead letter for ``show``: its fields, the original key, and the original
    value decoded with the original topic's schema when it decodes (else as text, or as
    hex and base64), always with the raw bytes' length."""
    value: dict[str, Any] | None
    if d.original_value is None:
        value = None
    else:
        try:
            decoded = serde.decode(d.original_topic, d.original_value)
            value = {"encoding": "avro", "schema": f"{d.original_topic}-value",
                     "value": _jsonable(decoded),
                     "base64": base64.b64encode(d.original_value).decode()}
        except (InvalidRecordError, RetriableError, KeyError) as exc:
            value = {**(_bytes(d.original_value) or {}), "not_avro": str(exc)[:300]}
        value["length"] = len(d.original_value)
    return {
        "id": d.id, "deadletter_topic": deadletter_topic, "stage": d.stage,
        "error_class": d.error_class, "error_message": d.error_message, "attempts": d.attempts,
        "at": datetime.fromtimestamp(d.at_ms / 1000).astimezone().isoformat(),
        "age": age_text(d.age_s()), "original": d.origin,
        "original_key": _bytes(d.original_key), "original_value": value,
        "redriven": d.summary()["redriven"],
    }


def show(settings: Settings, dead_letter_id: str) -> dict[str, Any]:
    """``dlq show``: the full record; ``KeyError`` when there is no such dead letter."""
    serde = Serde(settings)
    d = find(settings, dead_letter_id, serde)
    if d is None:
        raise KeyError(dead_letter_id)
    return describe(d, serde, settings.topics.deadletter)


def select(letters: list[DeadLetter], ids: list[str] | None = None, all_: bool = False,
           reason: str | None = None) -> tuple[list[DeadLetter], list[str]]:
    """The dead letters one of ``ids``/``all_``/``reason`` names (``reason``: a
    case-insensitive substring of the stage, error class or message), and the unknown ids."""
    if sum((bool(ids), all_, reason is not None)) != 1:
        raise ValueError("name what to re-drive: --id ID (repeatable), --all, or --reason TEXT")
    if ids:
        for i in ids:
            parse_id(i)
        by_id = {d.id: d for d in letters}
        wanted = [i.strip() for i in ids]
        return [by_id[i] for i in dict.fromkeys(wanted) if i in by_id], [i for i in wanted if i not in by_id]
    if all_:
        return list(letters), []
    needle = (reason or "").lower()
    return [d for d in letters
            if needle in f"{d.stage} {d.error_class} {d.error_message}".lower()], []


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in a container: the host still tells
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def redrive(settings: Settings, ids: list[str] | None = None, all_: bool = False,
            reason: str | None = None, by: str | None = None, dry_run: bool = False,
            timeout_s: float = 30.0) -> RedriveReport:
    """Send the chosen dead letters' original key and value back to their original topics,
    each once (module docstring: one transaction per run with the markers, fenced by a
    transactional id per dead-letter topic). ``FatalError`` when Kafka refuses the
    transaction (another redrive fenced this one): nothing of this run was sent."""
    serde = Serde(settings)
    topics = settings.topics
    ensure_topics(settings, [topics.deadletter_redriven])
    by = by or _who()
    producer: Producer | None = None
    if not dry_run:
        producer = Producer(producer_config(settings, **{
            "transactional.id": f"frontforce-dlq-redrive-{topics.deadletter}",
            "transaction.timeout.ms": 60000}))
        # Fences any other redrive of this dead-letter topic before the markers are read.
        producer.init_transactions(timeout_s)
    markers = redriven_markers(settings, serde, timeout_s)
    letters = [_dead_letter(serde, topics.deadletter, m)
               for m in read_to_end(settings.kafka.bootstrap_servers, topics.deadletter, timeout_s)]
    for d in letters:
        d.redriven = markers.get(d.id)
    chosen, unknown = select(letters, ids, all_, reason)
    report = RedriveReport(unknown=unknown)
    existing = set(AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
                   .list_topics(timeout=10).topics)
    todo: list[DeadLetter] = []
    for d in chosen:
        if d.redriven is not None:
            report.already[d.id] = f"{d.redriven.topic}[{d.redriven.partition}]@{d.redriven.offset}"
        elif d.stage == "unreadable":
            report.skipped[d.id] = "not a dead-letter record (cannot decode it)"
        elif d.original_value is None:
            report.skipped[d.id] = "no original value (a tombstone is not re-driven)"
        elif d.original_topic not in existing:
            report.skipped[d.id] = f"original topic {d.original_topic} does not exist"
        else:
            todo.append(d)
    if dry_run or not todo:
        for d in todo:
            report.sent[d.id] = f"{d.original_topic} (dry run: not sent)"
        if producer is not None:
            producer.flush(1)
        return report
    assert producer is not None
    landed: dict[str, tuple[int, int]] = {}
    errors: list[str] = []

    def delivered(dl_id: str) -> Any:
        def cb(err: KafkaError | None, msg: Message) -> None:
            # Nothing may raise in here (librdkafka's callback): the error is read later.
            if err is not None:
                errors.append(f"{dl_id}: {err!r}")
            else:
                landed[dl_id] = (int(msg.partition() or 0), int(msg.offset() or 0))
        return cb

    try:
        producer.begin_transaction()
        for d in todo:
            producer.produce(d.original_topic, key=d.original_key, value=d.original_value,
                             headers=[(REDRIVE_HEADER, f"{topics.deadletter}[{d.partition}]@{d.offset}")],
                             on_delivery=delivered(d.id))
        producer.flush(timeout_s)
        if errors or len(landed) != len(todo):
            raise RetriableError("kafka did not take every re-driven record: "
                                 + "; ".join(errors or ["no delivery report"]))
        now = int(time.time() * 1000)
        for d in todo:
            p, o = landed[d.id]
            producer.produce(topics.deadletter_redriven, key=d.id.encode(), value=serde.encode(
                topics.deadletter_redriven, {
                    "deadletter_partition": d.partition, "deadletter_offset": d.offset,
                    "original_topic": d.original_topic, "redriven_partition": p,
                    "redriven_offset": o, "by": by, "at": now}))
        producer.commit_transaction(timeout_s)
    except Exception as exc:  # noqa: BLE001 - fenced, refused, timed out: all end the same way
        try:
            producer.abort_transaction(timeout_s)
        except Exception:  # noqa: BLE001 - fenced: the broker aborted it already
            pass
        raise FatalError(f"re-drive not done, nothing of it was sent: {exc} (another `dlq redrive` "
                         "may have started meanwhile: run it again to see what is left)") from exc
    for d in todo:
        p, o = landed[d.id]
        report.sent[d.id] = f"{d.original_topic}[{p}]@{o}"
        log.info("dead letter re-driven", dead_letter=f"{topics.deadletter}[{d.partition}]@{d.offset}",
                 to=f"{d.original_topic}[{p}]@{o}", stage=d.stage, by=by)
    return report
