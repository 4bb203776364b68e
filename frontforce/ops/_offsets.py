"""Offsets and group states through Kafka's admin API: one request per question for every
partition at once (no consumer joins a group, nothing is committed)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

TP = tuple[str, int]  # (topic, partition)


def admin_client(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})


def partitions(admin: AdminClient, topics: Iterable[str], timeout_s: float = 10.0) -> list[TP]:
    """Every partition of the topics that exist (a missing topic has none)."""
    md = admin.list_topics(timeout=timeout_s).topics
    return [(t, p) for t in dict.fromkeys(topics) if t in md and md[t].error is None
            for p in sorted(md[t].partitions)]


def _list(admin: AdminClient, spec: dict[TP, Any], timeout_s: float) -> dict[TP, int]:
    if not spec:
        return {}
    futs = admin.list_offsets({TopicPartition(t, p): s for (t, p), s in spec.items()},
                              request_timeout=timeout_s)
    return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futs.items()}


def end_offsets(admin: AdminClient, tps: Iterable[TP], timeout_s: float = 10.0) -> dict[TP, int]:
    """The high watermark of each partition (the offset the next record will get)."""
    return _list(admin, {tp: OffsetSpec.latest() for tp in tps}, timeout_s)


def start_offsets(admin: AdminClient, tps: Iterable[TP], timeout_s: float = 10.0) -> dict[TP, int]:
    """The first offset still on disk of each partition."""
    return _list(admin, {tp: OffsetSpec.earliest() for tp in tps}, timeout_s)


def offsets_for_time(admin: AdminClient, tps: Iterable[TP], ms: int,
                     timeout_s: float = 10.0) -> dict[TP, int]:
    """For each partition the offset of its first record with a timestamp at or after ``ms``;
    -1 where there is none (every record is older)."""
    return _list(admin, {tp: OffsetSpec.for_timestamp(ms) for tp in tps}, timeout_s)


def committed(admin: AdminClient, group: str, tps: Iterable[TP],
              timeout_s: float = 10.0) -> dict[TP, int | None]:
    """The group's committed offset of each partition; None where it has committed none."""
    tps = list(tps)
    if not tps:
        return {}
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in tps])
    res = admin.list_consumer_group_offsets([req], request_timeout=timeout_s)[group].result()
    out: dict[TP, int | None] = dict.fromkeys(tps)
    for tp in res.topic_partitions:
        out[(tp.topic, tp.partition)] = int(tp.offset) if tp.offset >= 0 else None
    return out


@dataclass(frozen=True)
class GroupState:
    state: str  # Kafka's: Empty, Stable, PreparingRebalance, CompletingRebalance, Dead, Unknown
    members: int
    hosts: tuple[str, ...]  # client id @ host of each member

    @property
    def active(self) -> bool:
        return self.members > 0


def group_states(admin: AdminClient, groups: list[str], timeout_s: float = 10.0) -> dict[str, GroupState]:
    """Kafka's view of each group: its state and its members (a group nobody ever joined,
    or one whose offsets alone remain, has none)."""
    if not groups:
        return {}
    out: dict[str, GroupState] = {}
    for g, fut in admin.describe_consumer_groups(list(groups), request_timeout=timeout_s).items():
        try:
            d = fut.result()
        except KafkaException as exc:
            if "GROUP_ID_NOT_FOUND" in str(exc):
                out[g] = GroupState("Dead", 0, ())
                continue
            raise
        state = getattr(d.state, "name", str(d.state))
        out[g] = GroupState(state.title().replace("_", ""), len(d.members),
                            tuple(f"{m.client_id}@{m.host}" for m in d.members))
    return out
