"""Killing a worker at a chosen moment, and knowing when a replacement or a second worker
owns partitions: the tail of a command topic (decoded), the worker group as the group
coordinator describes it (asked with a timeout, retried, and only once the group is
Stable: a description asked for during a rebalance may not answer), and the replays the
command topics show."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient
from confluent_kafka.serialization import MessageField, SerializationContext

from frontforce.demo import read_topic
from frontforce.serialization import avro_deserializer, registry_client
from tests.chaos._probes import Tail

T = TypeVar("T")


def poll(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class CommandTail(Tail):
    """Commands produced from now on, decoded (the chaos test's tail: assigned partitions,
    no group)."""

    def __init__(self, bootstrap: str, registry_url: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.topic = topic
        self.decode = avro_deserializer(registry_client(registry_url))
        self.ctx = SerializationContext(topic, MessageField.VALUE)

    def next_matching(self, want: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        def one() -> dict[str, Any] | None:
            m = self.consumer.poll(0.02)
            if m is None or m.error() is not None:
                return None
            cmd: dict[str, Any] = self.decode(m.value(), self.ctx)
            return cmd if want(cmd) else None

        return poll(f"a matching command on {self.topic}", one, timeout, every=0.0)


def is_feed_item(cmd: dict[str, Any]) -> bool:
    op = cmd.get("operation") or {}
    return isinstance(op, dict) and "parent_id" in op and "body" in op


class Group:
    """The worker group as the group coordinator sees it."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.group = group

    def state(self) -> ConsumerGroupState | None:
        try:
            listing = self.admin.list_consumer_groups(request_timeout=5).result(timeout=8)
        except Exception:  # noqa: BLE001 - asked again
            return None
        found = [g.state for g in listing.valid if g.group_id == self.group]
        return found[0] if found else None

    def members(self) -> dict[str, dict[str, list[int]]] | None:
        """member id -> topic -> partitions, when the group is Stable; None otherwise or
        when the coordinator did not answer in time."""
        if self.state() != ConsumerGroupState.STABLE:
            return None
        try:
            desc = self.admin.describe_consumer_groups([self.group], request_timeout=5)[
                self.group].result(timeout=8)
        except Exception:  # noqa: BLE001 - asked again
            return None
        if desc.state != ConsumerGroupState.STABLE:
            return None
        out: dict[str, dict[str, list[int]]] = {}
        for m in desc.members:
            owned: dict[str, list[int]] = {}
            for tp in m.assignment.topic_partitions:
                owned.setdefault(tp.topic, []).append(tp.partition)
            out[m.member_id] = {t: sorted(ps) for t, ps in owned.items()}
        return out

    def wait(self, what: str, ok: Callable[[dict[str, dict[str, list[int]]]], bool],
             timeout: float = 90) -> dict[str, dict[str, list[int]]]:
        def probe() -> dict[str, dict[str, list[int]]] | None:
            members = self.members()
            return members if members is not None and ok(members) else None

        return poll(what, probe, timeout, every=0.5)


def replays(bootstrap: str, registry_url: str, topics: list[str], killed_ms: int) -> dict[str, int]:
    """Commands the killed worker sent before ``killed_ms`` and a worker sent again after
    it for the same event (same correlation id, same operation): work the kill made the
    replacement redo. -> "<event> <operation>": times sent."""
    sent: dict[str, list[float]] = {}
    for topic in topics:
        for c in read_topic(bootstrap, registry_url, topic):
            made = c.get("created_at")
            at = made.timestamp() * 1000 if isinstance(made, datetime) else float(made or 0)
            op = json.dumps(c["operation"], sort_keys=True, default=str)
            sent.setdefault(f"{c['origin']['correlation_id']} {op}", []).append(at)
    return {k: len(ats) for k, ats in sent.items() if min(ats) < killed_ms < max(ats)}
