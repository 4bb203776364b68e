"""One retry policy for everything the sink retries in place: the registry (decode, encode),
the broker (audit and dead-letter acknowledgements, commits) and Salesforce (one attempt at
the pending records of a batch).

Bounded by time (and for Salesforce by attempts), jittered, logged. The wait between
attempts is spent in the sink's ``idle``, which keeps polling the consumer with its
partitions paused, so the member stays in its group while nothing is acknowledged. At the
bound the sink stops with ``FatalError``: a record is never skipped, dead-lettered or
committed because of a transient failure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from frontforce import metrics
from frontforce.errors import FatalError, RetriableError

T = TypeVar("T")
log = structlog.get_logger("sinks.salesforce")

class RetryPolicy:
    def __init__(self, max_s: float, sleep: Callable[[float], None],
                 max_backoff_s: float = 30.0, stage: str = "sink.salesforce") -> None:
        self.max_s = max_s
        self.stage = stage  # the metrics label of its retries
        self.sleep = sleep
        self.max_backoff_s = max_backoff_s

    def run(self, fn: Callable[[], T], what: str, max_attempts: int | None = None) -> T:
        """``fn()``, again after a jittered wait while it raises ``RetriableError``; any other
        exception passes through at once. Raises ``FatalError`` naming ``what`` and the last
        error when ``max_s`` (or ``max_attempts``) is spent."""
        stop: stop_base = stop_before_delay(self.max_s)
        if max_attempts is not None:
            stop = stop | stop_after_attempt(max_attempts)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            metrics.RETRIES.labels(self.stage).inc()
            log.warning("retrying", what=what, attempt=state.attempt_number,
                        wait_s=round(state.upcoming_sleep, 2), error=str(exc))

        retrying = Retrying(
            retry=retry_if_exception_type(RetriableError),
            wait=wait_random_exponential(multiplier=0.5, max=self.max_backoff_s),
            stop=stop,
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except RetriableError as exc:
            stats = retrying.statistics
            attempts = stats.get("attempt_number", 0)
            # Say which bound was reached: the attempts (sink.max_attempts) can end it well
            # before the time limit.
            limit = (f"sink.max_attempts {max_attempts}" if max_attempts is not None and attempts >= max_attempts
                     else f"limit {self.max_s:g}s")
            raise FatalError(
                f"{what}: still failing after {attempts or '?'} attempts in "
                f"{stats.get('delay_since_first_attempt', 0):.0f}s ({limit}): {exc}; "
                "stopping without committing, the records are redelivered on restart"
            ) from exc
