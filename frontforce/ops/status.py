"""What a running deployment is doing, as one JSON-serializable dict: ``collect(settings)``.

``frontforce status`` renders it (``--json`` prints it as is); a status page can poll it.
Nothing is written anywhere: the Kafka reads are by assignment (no group joined, nothing
committed), one Salesforce call (``/limits``, after the login) and one Front read (``GET
/me``).

Keys (stable; a section that could not be read keeps its keys with ``None``/empty values
and says why in its ``error``)::

    {
      "version": 1,                       # of this layout; bumped only if a key changes meaning
      "at": "2026-12-02T10:00:00.123Z",   # when the (second) sample was taken, UTC
      "sample_s": 1.02,                   # seconds between the two offset samples
      "kafka": {"bootstrap": str, "topic_prefix": str, "error": str | None},
      "lag_total": int | None,            # sum of every group's lag
      "groups": {                         # one per pipeline consumer group, by group id
        "<group id>": {
          "role": "worker" | "worker-front-events" | "sink-salesforce" | "sink-front",
          "state": "Stable" | "Empty" | "PreparingRebalance" | "CompletingRebalance"
                   | "Dead" | "Unknown" | None,
          "members": int | None,          # active consumers in the group
          "lag": int | None,              # records not yet handled, all its partitions
          "records_per_s": float | None,  # committed offsets' progress over the sample
          "partitions": [                 # every partition of every topic it consumes
            {"topic": str, "partition": int,
             "committed": int | None,     # None: the group has committed nothing there
             "end": int,                  # high watermark
             "lag": int,                  # end - committed (end - first offset if None)
             "records_per_s": float}      # committed progress over the sample (0.0 if None)
          ],
          "error": str | None,
        },
      },
      "topics": {                         # the pipeline's topics, by name
        "<topic>": {"records": int,       # records on disk (end - first offset)
                    "end": int,
                    "in_per_s": float}    # records produced a second over the sample
      },
      "salesforce": {
        "daily_api_requests": {"max": int, "remaining": int, "used": int,
                               "used_pct": float} | None,   # /limits DailyApiRequests
        "sink_share_pct": float,          # sink.salesforce_quota_share: where the sink pauses
        "error": str | None,              # login refused, /limits not readable...
      },
      "front": {
        "configured": bool,               # front.api_token set (else nothing is called)
        "rate_limit": {"limit": int, "remaining": int, "reset_at": float,  # epoch s
                       "reset_in_s": float, "used_pct": float} | None,  # x-ratelimit-*
        "error": str | None,
      },
      "deadletter": {
        "topic": str,
        "depth": int | None,              # records on the dead-letter topic
        "last": [                         # the newest dead letters, newest first
          {"at": str, "stage": str, "error_class": str, "error_message": str,
           "original_topic": str, "original_partition": int, "original_offset": int,
           "attempts": int}
        ],
        "error": str | None,
      },
      "audit": {
        "topic": str,
        "failures": [                     # newest first: DEAD_LETTERED and ALERT outcomes
          {"at": str, "target": str, "operation": str, "outcome": str,
           "command_id": str, "record_id": str | None, "error": str | None,
           "reason": str | None}
        ],
        "scanned": int,                   # audit records read to find them (the tail)
        "error": str | None,
      },
      "ok": bool,                         # every section read, no dead letter, no failure
    }

The audit topic has no FAILED outcome: a command that failed for good is DEAD_LETTERED
(its dead letter carries the whole record), a mapping gone bad in the org is an ALERT.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaError, TopicPartition

from frontforce.config import Settings
from frontforce.ops import Group, pipeline_groups
from frontforce.ops._offsets import TP, admin_client, committed, end_offsets, group_states, partitions, start_offsets

VERSION = 1
FAILURE_OUTCOMES = frozenset({"DEAD_LETTERED", "ALERT"})


def collect(settings: Settings, sample_s: float = 1.0, last: int = 5, audit_scan: int = 500,
            timeout_s: float = 10.0) -> dict[str, Any]:
    """Sample the pipeline (see the module doc for the keys). ``sample_s``: seconds between
    the two offset samples the rates come from; ``last``: how many dead letters and audit
    failures to show; ``audit_scan``: how many of the newest audit records per partition to
    look through for failures."""
    t = settings.topics
    groups = pipeline_groups(settings)
    out: dict[str, Any] = {
        "version": VERSION, "at": None, "sample_s": None,
        "kafka": {"bootstrap": settings.kafka.bootstrap_servers,
                  "topic_prefix": settings.kafka.topic_prefix, "error": None},
        "lag_total": None,
        "groups": {g.group_id: _empty_group(g) for g in groups},
        "topics": {},
        "salesforce": {"daily_api_requests": None,
                       "sink_share_pct": round(100 * settings.sink.salesforce_quota_share, 1),
                       "error": None},
        "front": {"configured": settings.front.api_token is not None, "rate_limit": None,
                  "error": None},
        "deadletter": {"topic": t.deadletter, "depth": None, "last": [], "error": None},
        "audit": {"topic": t.audit, "failures": [], "scanned": 0, "error": None},
        "ok": False,
    }
    admin = admin_client(settings.kafka.bootstrap_servers)
    first: _Sample | None = None
    try:
        first = _sample(admin, groups, [t.deadletter, t.audit], timeout_s)
    except Exception as exc:  # noqa: BLE001 - reported, the other sections still run
        out["kafka"]["error"] = _why(exc)
    started = time.monotonic()
    # The remote reads run between the two samples: the wait costs nothing extra.
    _salesforce(settings, out["salesforce"])
    _front(settings, out["front"])
    if first is not None:
        _tail_sections(settings, first, out, last, audit_scan, timeout_s)
        rest = sample_s - (time.monotonic() - started)
        if rest > 0:
            time.sleep(rest)
        try:
            second = _sample(admin, groups, [t.deadletter, t.audit], timeout_s)
            _fill_groups(out, groups, first, second)
        except Exception as exc:  # noqa: BLE001
            out["kafka"]["error"] = _why(exc)
    out["at"] = _iso(time.time() * 1000)
    out["ok"] = (out["kafka"]["error"] is None and out["salesforce"]["error"] is None
                 and out["front"]["error"] is None and out["deadletter"]["error"] is None
                 and out["audit"]["error"] is None and not out["deadletter"]["depth"]
                 and not out["audit"]["failures"]
                 and not any(g["error"] for g in out["groups"].values()))
    return out


def _empty_group(g: Group) -> dict[str, Any]:
    return {"role": g.role, "state": None, "members": None, "lag": None, "records_per_s": None,
            "partitions": [], "error": None}


class _Sample:
    def __init__(self) -> None:
        self.mono = time.monotonic()
        self.ends: dict[TP, int] = {}
        self.starts: dict[TP, int] = {}
        self.committed: dict[str, dict[TP, int | None]] = {}
        self.errors: dict[str, str] = {}
        self.states: dict[str, Any] = {}


def _sample(admin: Any, groups: list[Group], extra_topics: list[str], timeout_s: float) -> _Sample:
    s = _Sample()
    topics = [tp for g in groups for tp in g.topics] + extra_topics
    tps = partitions(admin, topics, timeout_s)
    s.ends = end_offsets(admin, tps, timeout_s)
    s.starts = start_offsets(admin, tps, timeout_s)
    s.mono = time.monotonic()
    wanted = set(tps)
    for g in groups:
        try:
            s.committed[g.group_id] = committed(
                admin, g.group_id, [tp for tp in tps if tp[0] in g.topics and tp in wanted], timeout_s)
        except Exception as exc:  # noqa: BLE001
            s.errors[g.group_id] = _why(exc)
    try:
        s.states = group_states(admin, [g.group_id for g in groups], timeout_s)
    except Exception as exc:  # noqa: BLE001
        for g in groups:
            s.errors.setdefault(g.group_id, _why(exc))
    return s


def _fill_groups(out: dict[str, Any], groups: list[Group], a: _Sample, b: _Sample) -> None:
    dt = max(1e-3, b.mono - a.mono)
    out["sample_s"] = round(dt, 3)
    total = 0
    for g in groups:
        entry = out["groups"][g.group_id]
        state = b.states.get(g.group_id)
        if state is not None:
            entry["state"], entry["members"] = state.state, state.members
        if g.group_id in b.errors:
            entry["error"] = b.errors[g.group_id]
            continue
        rows, lag, rate = [], 0, 0.0
        for tp, pos in sorted(b.committed.get(g.group_id, {}).items()):
            end = b.ends[tp]
            start = b.starts.get(tp, 0)
            behind = max(0, end - (pos if pos is not None else start))
            before = a.committed.get(g.group_id, {}).get(tp)
            r = (pos - before) / dt if pos is not None and before is not None else 0.0
            rows.append({"topic": tp[0], "partition": tp[1], "committed": pos, "end": end,
                         "lag": behind, "records_per_s": round(max(0.0, r), 2)})
            lag += behind
            rate += max(0.0, r)
        entry.update(lag=lag, records_per_s=round(rate, 2), partitions=rows)
        total += lag
    out["lag_total"] = total
    topics: dict[str, dict[str, Any]] = {}
    for (topic, p), end in sorted(b.ends.items()):
        e = topics.setdefault(topic, {"records": 0, "end": 0, "in_per_s": 0.0})
        e["records"] += end - b.starts.get((topic, p), 0)
        e["end"] += end
        e["in_per_s"] = round(e["in_per_s"] + max(0, end - a.ends.get((topic, p), end)) / dt, 2)
    out["topics"] = topics


# One session per process and org (the status page samples every few seconds: a login per
# sample would spend Salesforce's logins-per-hour limit); dropped when a call fails.
_SESSIONS: dict[str, Any] = {}


def _salesforce(settings: Settings, section: dict[str, Any]) -> None:
    from frontforce.salesforce import connect

    cfg = settings.salesforce
    key = f"{cfg.login_url}|{cfg.client_id}|{getattr(cfg, 'username', '')}"
    try:
        conn = _SESSIONS.get(key)
        if conn is None:
            conn = _SESSIONS[key] = connect(cfg)
        try:
            limits: Any = conn.client.restful("limits/")
        except Exception:  # noqa: BLE001 - an expired session: log in once more
            _SESSIONS.pop(key, None)
            conn = _SESSIONS[key] = connect(cfg)
            limits = conn.client.restful("limits/")
        daily = limits["DailyApiRequests"]
        maximum, remaining = int(daily["Max"]), int(daily["Remaining"])
    except Exception as exc:  # noqa: BLE001 - FatalError (login refused), transport, odd answer
        _SESSIONS.pop(key, None)
        section["error"] = _why(exc)
        return
    used = max(0, maximum - remaining)
    section["daily_api_requests"] = {"max": maximum, "remaining": remaining, "used": used,
                                     "used_pct": round(100 * used / maximum, 2) if maximum else 0.0}


def _front(settings: Settings, section: dict[str, Any]) -> None:
    cfg = settings.front
    if cfg.api_token is None:
        return
    try:
        with httpx.Client(timeout=cfg.timeout_s, trust_env=False) as http:
            r = http.get(cfg.api_url.rstrip("/") + "/me", headers={
                "Authorization": f"Bearer {cfg.api_token.get_secret_value()}",
                "Accept": "application/json"})
    except httpx.HTTPError as exc:
        section["error"] = _why(exc)
        return
    h = r.headers
    if r.status_code == 401:
        section["error"] = "front refused the API token (401)"
    elif r.status_code >= 400 and r.status_code != 429:
        section["error"] = f"GET /me: HTTP {r.status_code}"
    try:
        limit, remaining = int(h["x-ratelimit-limit"]), int(h["x-ratelimit-remaining"])
        reset = float(h["x-ratelimit-reset"])
    except (KeyError, ValueError):
        if section["error"] is None:
            section["error"] = "GET /me answered without x-ratelimit-* headers"
        return
    section["rate_limit"] = {
        "limit": limit, "remaining": remaining, "reset_at": reset,
        "reset_in_s": round(max(0.0, reset - time.time()), 1),
        "used_pct": round(100 * (limit - remaining) / limit, 2) if limit else 0.0}


def _tail_sections(settings: Settings, s: _Sample, out: dict[str, Any], last: int,
                   audit_scan: int, timeout_s: float) -> None:
    from frontforce.serialization import Serde

    t = settings.topics
    serde = Serde(settings)
    dl = out["deadletter"]
    dl_tps = [tp for tp in s.ends if tp[0] == t.deadletter]
    dl["depth"] = sum(s.ends[tp] - s.starts.get(tp, 0) for tp in dl_tps)
    try:
        letters = []
        for value in _tail(settings.kafka.bootstrap_servers, s, t.deadletter, last, timeout_s):
            d = serde.decode(t.deadletter, value)
            letters.append({
                "at": _iso(d["at"]), "stage": d["stage"], "error_class": d["error_class"],
                "error_message": d["error_message"], "original_topic": d["original_topic"],
                "original_partition": d["original_partition"],
                "original_offset": d["original_offset"], "attempts": d.get("attempts", 1)})
        dl["last"] = sorted(letters, key=lambda x: x["at"], reverse=True)[:last]
    except Exception as exc:  # noqa: BLE001
        dl["error"] = _why(exc)
    au = out["audit"]
    try:
        failures, scanned = [], 0
        for value in _tail(settings.kafka.bootstrap_servers, s, t.audit, audit_scan, timeout_s):
            scanned += 1
            a = serde.decode(t.audit, value)
            if a["outcome"] in FAILURE_OUTCOMES:
                failures.append({
                    "at": _iso(a["at"]), "target": a["target"], "operation": a["operation"],
                    "outcome": a["outcome"], "command_id": a["command_id"],
                    "record_id": a.get("record_id"), "error": a.get("error"),
                    "reason": a.get("reason")})
        au["failures"] = sorted(failures, key=lambda x: x["at"], reverse=True)[:last]
        au["scanned"] = scanned
    except Exception as exc:  # noqa: BLE001
        au["error"] = _why(exc)


def _tail(bootstrap: str, s: _Sample, topic: str, n: int, timeout_s: float) -> list[bytes]:
    """The values of the last ``n`` records of each partition of ``topic`` (as of the
    sample), read by assignment."""
    want = {p: (max(s.starts.get((t, p), 0), end - n), end) for (t, p), end in s.ends.items()
            if t == topic and end > s.starts.get((t, p), 0)}
    if not want:
        return []
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"status-{uuid.uuid4()}",
                  "enable.auto.commit": False, "enable.partition.eof": True, "log_level": 0})
    out: list[bytes] = []
    try:
        c.assign([TopicPartition(topic, p, lo) for p, (lo, _) in want.items()])
        pending = set(want)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            p = m.partition() or 0
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(p)
                continue
            off = m.offset() or 0
            if off < want[p][1] and m.value() is not None:
                out.append(bytes(m.value() or b""))
            if off + 1 >= want[p][1]:
                pending.discard(p)
        if pending:
            raise TimeoutError(f"{topic}: partitions {sorted(pending)} not read within {timeout_s:.0f} s")
    finally:
        c.close()
    return out


def _iso(value: Any) -> str:
    """A record's time (timestamp-millis: a datetime or an int of ms) as ISO 8601 UTC."""
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        dt = datetime.fromtimestamp(float(value) / 1000, tz=UTC)
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
