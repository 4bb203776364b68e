"""A Salesforce sink broken on purpose: it commits a batch's offsets *before* writing the
batch to Salesforce. Killed while that write is in flight, it has told Kafka "done" for
records Salesforce never got; after the restart nobody reads them again and their Tasks are
missing. ``tests/test_chaos.py`` runs its scenario against this variant and requires the
check to report exactly that: a chaos test that cannot fail proves nothing.

    python -m tests.chaos.broken_sink --config FILE

runs the product's own ``frontforce sink salesforce`` command with ``SalesforceSink``
replaced by the variant below, so everything but the commit order is the product's.

The sink's internals change (its commit path has moved before); the variant leans only on
the class, its ``process(batch)``, and two facts that any version keeps: the sink's group
member is a confluent-kafka ``Consumer`` held by the sink (or by one of its attributes),
and a batch item is a consumed ``Message`` or carries one as ``.msg``.
"""

from __future__ import annotations

import sys
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

import sinks.salesforce
import sinks.salesforce._sink
from sinks.salesforce import SalesforceSink

BANNER = "broken sink: offsets committed BEFORE the Salesforce write (tests.chaos.broken_sink)"


def _consumer(sink: object) -> Consumer:
    for holder in [sink, *vars(sink).values()]:
        for value in [holder, *getattr(holder, "__dict__", {}).values()]:
            if isinstance(value, Consumer):
                return value
    raise RuntimeError("no confluent_kafka.Consumer found on the sink; update broken_sink")


def _message(item: Any) -> Message:
    msg = item if isinstance(item, Message) else getattr(item, "msg", None)
    if not isinstance(msg, Message):
        raise RuntimeError(f"cannot find the Kafka message in {type(item).__name__}")
    return msg


class CommitFirstSink(SalesforceSink):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        print(BANNER, file=sys.stderr, flush=True)

    def process(self, batch: list[Any]) -> None:
        # The bug: Kafka hears "done" for the batch before Salesforce has any of it.
        last: dict[tuple[str, int], int] = {}
        for item in batch:
            m = _message(item)
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            assert topic is not None and partition is not None and offset is not None
            last[(topic, partition)] = max(last.get((topic, partition), -1), offset)
        if last:
            _consumer(self).commit(offsets=[TopicPartition(t, p, o + 1)
                                            for (t, p), o in last.items()], asynchronous=False)
        super().process(batch)


def main(argv: list[str] | None = None) -> None:
    # Wherever the command looks the class up, it finds the variant.
    sinks.salesforce._sink.SalesforceSink = CommitFirstSink  # type: ignore[misc]
    sinks.salesforce.SalesforceSink = CommitFirstSink  # type: ignore[misc]
    from frontforce.cli import app

    app(["sink", "salesforce", *(sys.argv[1:] if argv is None else argv)],
        prog_name="python -m tests.chaos.broken_sink")


if __name__ == "__main__":
    main()
