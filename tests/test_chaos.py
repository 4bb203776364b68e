"""Chaos: SIGKILL the receiver, the stream worker and the Salesforce sink at the moments
where a lost or doubled effect would come from, restart each and let it take its partitions
back, and check that Salesforce ends up exactly as if nothing had died.

Guards the delivery guarantee of ../shared/DESIGN.md: a process killed with SIGKILL at any
moment, then restarted, leaves every Front message logged once, on the right Contact,
nothing missing, nothing doubled. The incidents it stands for: a sink that commits offsets
before its Salesforce write is durable loses the batch it dies in (the second test runs that
sink, ``tests/chaos/broken_sink.py``, and the check must report the loss); a sink or worker
whose replay is not idempotent writes a Task twice (the sink creates Tasks and relies on the
Unique external id it checks at start, so the org keeps uniqueness on and a replayed create
shows as a SKIPPED audit, never as a second row); a worker or sink that does not re-read what it had not committed
loses it; a receiver that acknowledges a webhook it has not stored loses it when killed
mid-request. The check also requires evidence that each kill made the pipeline redo work,
so a kill that landed where nothing was at stake fails the test instead of passing it.

The moments and how they are detected are in ``tests/chaos/scenario.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from frontforce.localstack import LocalStack
from tests.chaos.scenario import BROKEN_SINK, SINK, check, run_chaos, summary
from tests.test_pipeline import Pipeline, running_pipeline


@pytest.fixture
def chaos_pipeline(infra: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with running_pipeline(infra, tmp_path_factory.mktemp("chaos")) as p:
        yield p


def test_sigkill_at_the_moments_that_matter_loses_nothing_and_doubles_nothing(
        chaos_pipeline: Pipeline) -> None:
    run = run_chaos(chaos_pipeline, SINK)
    print(summary(run))
    problems = check(run)
    assert not problems, "\n".join([summary(run), *problems])


def test_the_chaos_check_catches_a_sink_that_commits_before_it_writes(
        chaos_pipeline: Pipeline) -> None:
    """A test of the test: with offsets committed before the write, the kill during the held
    upsert loses that batch for good, and the check must say so."""
    run = run_chaos(chaos_pipeline, BROKEN_SINK, phases=("sink",))  # only the sink's kills matter
    print(summary(run))
    problems = check(run)
    print("\n".join(problems))
    assert any(p.startswith("missing:") for p in problems), problems
    # ...and what is missing is what the held call carried, committed but never written.
    lost = {m for m in run.delivered if m not in {t["Front_Message_Id__c"] for t in run.tasks}}
    assert lost and lost <= run.sent_for_held_upsert, (lost, run.sent_for_held_upsert)
    log = (chaos_pipeline.stack.logs / "sink-salesforce.log").read_text()
    assert "broken sink: offsets committed BEFORE" in log  # the variant really ran
