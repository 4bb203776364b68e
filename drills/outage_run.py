"""A Salesforce outage of two minutes and a storm of 429s from Front, mid-run with every use
case on: the backlog is held in Kafka (the sinks' consumer groups fall behind, nothing is
dead-lettered), drained afterwards; lost 0, written twice 0, counted at the emulators.

    .venv/bin/python -m drills.outage_run --size 3000 [--outage 120] [--storm 120]

The people make ``--size`` changes, ``--pace`` seconds apart on each side (the default
spreads them over about five minutes). Once ``--at`` of them are made, Salesforce goes
down: the emulator answers every public request (REST, SOQL, OAuth) 503
``SERVER_UNAVAILABLE`` (``/__admin/faults``, ``outage``) for ``--outage`` seconds; the
change events already published keep flowing (the Pub/Sub API is another service). A
person editing Salesforce meanwhile waits for it to come back (their edit is retried).
``--storm-after`` seconds after the outage began, Front's rate limit drops to
``--storm-rpm`` requests a minute and every public API call is answered 429 (with the
limiter's ``retry-after`` / ``x-ratelimit-reset`` headers; the Front sink paces itself by
those headers and would otherwise meet few) for ``--storm`` seconds, then both return to
the world's settings. The report has the sinks' lag sampled every
5 s (its peak during each fault: the backlog held in Kafka), the 503s and 429s served, and
the dead letters written (none may come from a fault: quota and outages are transient).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from drills._harness import Drill, arguments, run
from frontforce.kafka import read_to_end


def patient(call: Callable[..., Any], stop: threading.Event) -> Callable[..., Any]:
    """A person's Salesforce call that waits out an outage (retried every 2 s on a 503)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        while True:
            try:
                return call(*args, **kwargs)
            except AssertionError as exc:
                if " 503 " not in str(exc) or stop.is_set():
                    raise
                time.sleep(2.0)

    return wrapped


def faults(drill: Drill) -> None:
    args = drill.args
    world = drill.world
    em = world.emulators
    s = world.stack.settings()
    sinks = {"salesforce": (s.sink.group_id, [s.topics.commands_salesforce]),
             "front": (s.front_sink.group_id, [s.topics.commands_front])}
    samples: list[dict[str, Any]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(5.0):
            row: dict[str, Any] = {"at_s": drill.elapsed()}
            row.update({k: drill.lag(g, t) for k, (g, t) in sinks.items()})
            samples.append(row)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    drill.wait_progress(args.at)
    world.person._call = patient(world.person._call, drill.stopping)  # type: ignore[method-assign]
    r = em.sf.post("/__admin/faults", json={"match": {"path_regex": "^/services/"},
                                             "fault": "outage"})
    r.raise_for_status()
    rule = r.json()["rules"][0]["id"]
    outage_at = drill.elapsed()
    drill.note("Salesforce down (503 on every public request)", progress=round(drill.progress, 3))
    storm_at = -1.0
    storm_end = -1.0
    outage_end = -1.0
    t0 = time.monotonic()
    while True:
        now = time.monotonic() - t0
        if outage_end < 0 and now >= args.outage:
            faults_seen = em.sf.get("/__admin/faults").json()["rules"]
            drill.extra["salesforce_503s"] = sum(int(f["applied"]) for f in faults_seen if f["id"] == rule)
            em.sf.delete(f"/__admin/faults/{rule}").raise_for_status()
            outage_end = drill.elapsed()
            drill.note("Salesforce back")
        if storm_at < 0 and now >= args.storm_after:
            em.front.post("/__admin/config", json={"rpm": args.storm_rpm}).raise_for_status()
            # The sink paces itself by Front's rate-limit headers and would meet few 429s:
            # every public request answers 429 for the storm (with the limiter's headers).
            em.front.post("/__admin/faults", json={"status": 429, "count": 10_000_000}).raise_for_status()
            storm_at = drill.elapsed()
            drill.note("Front rate limit down and every call refused (429 storm)", rpm=args.storm_rpm)
        if storm_at >= 0 and storm_end < 0 and now >= args.storm_after + args.storm:
            em.front.delete("/__admin/faults").raise_for_status()
            em.front.post("/__admin/config", json={"rpm": 100000, "burst_rps": 1000}).raise_for_status()
            storm_end = drill.elapsed()
            drill.note("Front rate limit back")
        if outage_end >= 0 and storm_end >= 0:
            break
        time.sleep(0.5)
    # The backlog drains: sample until both sinks are caught up (or 10 minutes).
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if samples and samples[-1]["at_s"] > storm_end and all(
                samples[-1][k] == 0 for k in sinks):
            break
        time.sleep(2.0)
    sampling.set()

    def peak(kind: str, start: float, end: float) -> int:
        return max((int(x[kind] or 0) for x in samples if start <= x["at_s"] <= end + 5), default=0)

    drained = next((x["at_s"] for x in samples if x["at_s"] > max(outage_end, storm_end)
                    and all(x[k] == 0 for k in sinks)), None)
    drill.extra.update({
        "salesforce_outage_s": [outage_at, outage_end],
        "front_429_storm_s": [storm_at, storm_end],
        "commands_salesforce_backlog_peak_during_outage": peak("salesforce", outage_at, outage_end),
        "commands_front_backlog_peak_during_storm": peak("front", storm_at, storm_end),
        "sinks_caught_up_at_s": drained,
        "front_429s": sum(1 for q in em.front_requests() if int(q["status"]) == 429),
        "lag_samples": samples,
    })


def after(drill: Drill) -> list[str]:
    s = drill.world.stack.settings()
    dead = sum(1 for _ in read_to_end(drill.world.stack.bootstrap, s.topics.deadletter))
    drill.extra["dead_letters"] = dead
    problems = [f"{dead} dead letters"] if dead else []
    if not drill.extra.get("salesforce_503s"):
        problems.append("the outage served no 503 to anyone")
    if not drill.extra.get("front_429s"):
        problems.append("the storm served no 429 to anyone")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = arguments("drills.outage_run", __doc__ or "", size=3000)
    ap.set_defaults(pace=0.2)
    ap.add_argument("--at", type=float, default=0.15, help="share of the changes made before the outage")
    ap.add_argument("--outage", type=float, default=120.0, help="seconds Salesforce is down")
    ap.add_argument("--storm-after", type=float, default=60.0,
                    help="seconds after the outage began that Front's 429 storm begins")
    ap.add_argument("--storm", type=float, default=120.0, help="seconds of the 429 storm")
    ap.add_argument("--storm-rpm", type=int, default=6, help="Front's rate limit during the storm")
    return run("outage_run", ap.parse_args(argv), faults, after=after)


if __name__ == "__main__":
    sys.exit(main())
