"""``python -m tests.broken_lane worker -c FILE``: the stream worker whose fast lane counts a
batch as done (its offsets committed at the next commit) as soon as it handed the batch's
records to the producer, not once the broker acknowledged them, and never looks at a record
the broker refused.

Guards test_worker_delivery's refused-command test against proving nothing: run against this
variant, a message whose Task command the broker refuses is committed away with neither a
Task nor a dead letter (lost).
"""

from __future__ import annotations

from confluent_kafka import Message

from frontforce.cli import main
from streams._fastlane import FastLane


def _fire_and_forget(self: FastLane, batch: list[Message]) -> None:
    self.fresh = {}
    thens = []
    for m in batch:
        for item in self._handle(m):
            if callable(item):
                thens.append(item)
            else:
                self._produce(item, 0, {})
    for seen in self._seen_items():
        self._produce(seen, 0, {})  # type: ignore[arg-type]
    self.producer.poll(0)
    self._retire(batch, thens)


FastLane._pipelined = _fire_and_forget  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
