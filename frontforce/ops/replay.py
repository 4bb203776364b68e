"""``frontforce replay``: make the pipeline read again from a point in time.

Each selected consumer group (``frontforce.ops.pipeline_groups``: the worker on
``front.events`` and ``salesforce.changes``, the sinks on their command topics) is moved,
partition by partition, to the offset of the first record at or after ``--from``
(``offsets_for_times``). Re-reading is safe because every stage is idempotent: the worker
drops events it has seen, the sinks skip what they already wrote (a Task's external id, a
Lead's handle, the ledgers of notes and Front writes).

Rules:

- Kafka moves the offsets of a group only while it has no members, so the processes of a
  group must be stopped first; ``replay`` refuses a group with members (naming them), or
  waits ``--wait-stopped`` seconds for them to leave (a SIGKILLed member stays a member
  until its session times out, 10 s here).
- A group is never moved *forward*: where it has not yet read up to ``--from`` its offset
  stays (moving it would skip records it never handled), and a partition where it has
  committed nothing is left alone (it starts from the beginning anyway).
- ``--to``: Kafka has no "stop at" for a group, so after the replay the groups go on to the
  end of each topic, as they always do (records after ``--to`` were handled before, and
  the sinks skip them again). ``--to`` bounds what is *counted*: the dry run's re-read
  records and the progress bar, which completes once every group has passed the offsets of
  ``--to`` (without ``--to``: the ends of the topics when the offsets were moved).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from frontforce.config import Settings
from frontforce.ops import Group
from frontforce.ops._offsets import admin_client, committed, end_offsets, group_states, offsets_for_time, partitions


class ReplayRefused(RuntimeError):
    """A group cannot be moved (it has members); the message names them."""


@dataclass
class Row:
    group: str
    topic: str
    partition: int
    committed: int | None  # the group's offset now (None: it has committed nothing there)
    from_offset: int  # first record at or after --from (the end if none)
    to_offset: int  # first record at or after --to (the end if none, or no --to)
    end: int

    @property
    def new_offset(self) -> int | None:
        """Where the group is moved: never forward, never where it has no offset."""
        if self.committed is None:
            return None
        return min(self.committed, self.from_offset)

    @property
    def reread(self) -> int:
        """Records the group had already handled and will read again, up to --to."""
        if self.new_offset is None or self.committed is None:
            return 0
        return max(0, min(self.committed, self.to_offset) - self.new_offset)

    @property
    def total(self) -> int:
        """Records the group reads from its new offset up to --to (re-read and not yet read)."""
        return 0 if self.new_offset is None else max(0, self.to_offset - self.new_offset)

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "topic": self.topic, "partition": self.partition,
                "committed": self.committed, "from_offset": self.from_offset,
                "to_offset": self.to_offset, "end": self.end, "new_offset": self.new_offset,
                "reread": self.reread}


@dataclass
class Plan:
    from_ms: int
    to_ms: int | None
    groups: list[Group]
    rows: list[Row] = field(default_factory=list)
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group -> its members

    def rows_of(self, group: str) -> list[Row]:
        return [r for r in self.rows if r.group == group]

    def reread(self, group: str | None = None) -> int:
        return sum(r.reread for r in self.rows if group is None or r.group == group)


def plan(settings: Settings, groups: list[Group], from_ms: int, to_ms: int | None,
         timeout_s: float = 10.0) -> Plan:
    """What ``replay`` would do, read from the broker; nothing is changed."""
    admin = admin_client(settings.kafka.bootstrap_servers)
    p = Plan(from_ms, to_ms, groups)
    tps = partitions(admin, [t for g in groups for t in g.replay_topics], timeout_s)
    ends = end_offsets(admin, tps, timeout_s)
    starts = offsets_for_time(admin, tps, from_ms, timeout_s)
    stops = offsets_for_time(admin, tps, to_ms, timeout_s) if to_ms is not None else ends
    for g in groups:
        mine = [tp for tp in tps if tp[0] in g.replay_topics]
        pos = committed(admin, g.group_id, mine, timeout_s)
        for tp in mine:
            end = ends[tp]
            p.rows.append(Row(g.group_id, tp[0], tp[1], pos.get(tp),
                              starts[tp] if starts[tp] >= 0 else end,
                              stops[tp] if stops[tp] >= 0 else end, end))
    states = group_states(admin, [g.group_id for g in groups], timeout_s)
    p.members = {g: s.hosts for g, s in states.items() if s.active}
    return p


def wait_stopped(settings: Settings, groups: list[Group], timeout_s: float,
                 on_wait: Callable[[dict[str, tuple[str, ...]]], None] | None = None) -> dict[str, tuple[str, ...]]:
    """Wait up to ``timeout_s`` for the groups to have no members; the ones that still do."""
    admin = admin_client(settings.kafka.bootstrap_servers)
    deadline = time.monotonic() + timeout_s
    while True:
        states = group_states(admin, [g.group_id for g in groups])
        busy = {g: s.hosts for g, s in states.items() if s.active}
        if not busy or time.monotonic() >= deadline:
            return busy
        if on_wait is not None:
            on_wait(busy)
        time.sleep(1.0)


def apply(settings: Settings, p: Plan, timeout_s: float = 30.0) -> None:
    """Move the groups' offsets as planned. ``ReplayRefused`` if a group has members (Kafka
    refuses too: UNKNOWN_MEMBER_ID / non-empty group)."""
    admin = admin_client(settings.kafka.bootstrap_servers)
    states = group_states(admin, [g.group_id for g in p.groups])
    busy = {g: s.hosts for g, s in states.items() if s.active}
    if busy:
        raise ReplayRefused(busy_message(busy))
    for g in p.groups:
        moves = [TopicPartition(r.topic, r.partition, r.new_offset) for r in p.rows_of(g.group_id)
                 if r.new_offset is not None and r.new_offset != r.committed]
        if not moves:
            continue
        fut = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(g.group_id, moves)],
                                                 request_timeout=timeout_s)
        try:
            res = fut[g.group_id].result()
        except Exception as exc:  # noqa: BLE001 - a member joined meanwhile, mostly
            raise ReplayRefused(f"Kafka refused to move group {g.group_id}: {exc} (did one of its "
                                "processes start meanwhile? stop it and run replay again)") from exc
        for tp in res.topic_partitions:
            if tp.error is not None:
                raise ReplayRefused(f"Kafka refused to move {g.group_id} {tp.topic}[{tp.partition}]: "
                                    f"{tp.error}")


def busy_message(busy: dict[str, tuple[str, ...]]) -> str:
    lines = [f"  {g}: {len(h)} member(s): {', '.join(h)}" for g, h in sorted(busy.items())]
    return ("these consumer groups are running; Kafka moves a group's offsets only while it has "
            "no members. Stop their processes (or pass --wait-stopped SECONDS to wait for them "
            "to leave) and run replay again:\n" + "\n".join(lines))


@dataclass
class Progress:
    group: str
    done: int
    total: int
    members: int
    caught_up: bool


def progress(settings: Settings, p: Plan, every_s: float = 1.0) -> Iterator[list[Progress]]:
    """After ``apply``: how far each group has read again, every ``every_s``, until every
    moved partition's committed offset reached its ``to_offset``."""
    admin = admin_client(settings.kafka.bootstrap_servers)
    while True:
        states = group_states(admin, [g.group_id for g in p.groups])
        out = []
        for g in p.groups:
            rows = [r for r in p.rows_of(g.group_id) if r.new_offset is not None]
            pos = committed(admin, g.group_id, [(r.topic, r.partition) for r in rows])
            done = total = 0
            ok = True
            for r in rows:
                assert r.new_offset is not None
                now = pos.get((r.topic, r.partition))
                now = r.new_offset if now is None else now
                total += r.total
                done += max(0, min(now, r.to_offset) - r.new_offset)
                ok = ok and now >= r.to_offset
            st = states.get(g.group_id)
            out.append(Progress(g.group_id, done, total, st.members if st else 0, ok))
        yield out
        if all(x.caught_up for x in out):
            return
        time.sleep(every_s)
