"""``python -m tests.amnesiac_lane worker -c FILE``: the stream worker whose fast lane
restores nothing of its dedupe log when it is assigned a partition (it starts every run with
an empty window). Keeps test_worker_delivery's redelivery-after-restart test from proving
nothing: against this variant, Front's redelivery of an event handled before the restart is
matched again instead of audited as a repeat."""

from __future__ import annotations

from frontforce.cli import main
from streams._fastlane import FastLane, SeenState

FastLane._restore = lambda self, partition: SeenState()  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
