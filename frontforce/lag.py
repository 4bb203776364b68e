"""Consumer-group lag: how far a group is behind the end of some topics. The demo and the
tests use it to know when the pipeline has settled, instead of sleeping."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient


def group_lag(bootstrap: str, group: str, topics: Iterable[str]) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lag-probe-{uuid.uuid4()}",
                      "enable.auto.commit": False})
    try:
        md = admin.list_topics(timeout=10).topics
        tps = [TopicPartition(t, p) for t in topics if t in md for p in md[t].partitions]
        if not tps:
            return 0
        fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in fut[group].result().topic_partitions}
        lag = 0
        for tp in tps:
            low, high = probe.get_watermark_offsets(tp, timeout=10)
            pos = committed.get((tp.topic, tp.partition), -1)
            lag += high - (pos if pos >= 0 else low)
        return lag
    finally:
        probe.close()


def wait_settled(bootstrap: str, groups: dict[str, list[str]], timeout_s: float,
                 quiet_s: float = 3.0) -> bool:
    """True once every group has zero lag on its topics and stayed so for ``quiet_s``
    (a stage may still be producing into the next stage's topic)."""
    deadline = time.monotonic() + timeout_s
    settled_since: float | None = None
    while time.monotonic() < deadline:
        total = sum(group_lag(bootstrap, g, ts) for g, ts in groups.items())
        if total == 0:
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since >= quiet_s:
                return True
        else:
            settled_since = None
        time.sleep(0.5)
    return False


def describe_lag(bootstrap: str, groups: dict[str, list[str]]) -> dict[str, int]:
    """Lag per group/topic, for error messages."""
    return {f"{g}/{t}": group_lag(bootstrap, g, [t]) for g, ts in groups.items() for t in ts}
