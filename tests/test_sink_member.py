"""The Salesforce sink's group member on the real broker: what it may commit after a
rebalance it saw mid-batch."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from frontforce.config import Settings
from frontforce.kafka import consumer_config, ensure_topics
from frontforce.localstack import LocalStack
from sinks.salesforce._member import GroupMember, Received


def test_offsets_read_before_a_revocation_are_not_committed(infra: LocalStack) -> None:
    """A member that polls mid-batch (to stay in its group) can see its partitions revoked
    and even assigned back. Offsets of records read under the ended assignment are not
    committed: the partition's owner reads them again from the last committed offset, and a
    late commit here would move that owner's offsets."""
    tag = uuid.uuid4().hex[:8]
    settings = Settings.model_validate({
        "kafka": {"bootstrap_servers": infra.bootstrap, "schema_registry_url": infra.registry_url,
                  "topic_prefix": f"m{tag}."},
        "front": {"app_secret": "unused"},
        "salesforce": {"login_url": "https://127.0.0.1:1", "client_id": "unused",
                       "client_secret": "unused"},
    })
    topic, group = settings.topics.commands_salesforce, f"member-{tag}"
    ensure_topics(settings, [topic])
    producer = Producer({"bootstrap.servers": infra.bootstrap})
    for i in range(9):
        producer.produce(topic, key=f"k{i}".encode(), value=b"v")
    assert producer.flush(10) == 0

    def consumer() -> Consumer:
        return Consumer(consumer_config(settings, group, **{"max.poll.interval.ms": 10000}))

    a = GroupMember(consumer(), topic, gap_budget_s=5)
    a.subscribe()
    batch: list[Received] = []
    deadline = time.monotonic() + 30
    while len(batch) < 9 and time.monotonic() < deadline:
        batch += a.next_batch(20, 0.5)
    assert len(batch) == 9
    b = consumer()
    b.subscribe([topic])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (a.revoked and b.assignment()):
        a.keepalive(0.2)  # mid-batch: paused, polling, rebalance callbacks run
        b.poll(0.2)
    try:
        assert a.revoked and b.assignment()
        assert a.commit(batch) == 0
        admin = AdminClient({"bootstrap.servers": infra.bootstrap})
        tps = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])
        assert all(tp.offset < 0 for tp in fut[group].result().topic_partitions)
    finally:
        b.close()
        a.close()
