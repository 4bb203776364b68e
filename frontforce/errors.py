"""One root exception, grouped by what to do about the failure (STYLE habit 4).

- ``FatalError``: stop the process (bad credentials, bad configuration).
- ``RetriableError``: back off and try again (5xx, timeouts, row locks).
- ``InvalidRecordError``: the record can never be applied; dead-letter it with the reason.
- ``BackPressure``: the remote asked us to wait (Front 429, Salesforce budget); pause for
  ``wait_seconds`` and retry. Quota never dead-letters anything.
"""

from __future__ import annotations


class FrontforceError(Exception):
    """Root of every error frontforce raises on purpose."""


class FatalError(FrontforceError):
    """Continuing would be wrong or useless: stop and tell the operator."""


class ConfigError(FatalError):
    """The configuration file is invalid. ``problems`` holds every `file:line field: msg`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class RetriableError(FrontforceError):
    """Transient failure: the same call may succeed later."""


class InvalidRecordError(FrontforceError):
    """The record is permanently wrong; it belongs on the dead-letter topic."""


class BackPressure(FrontforceError):
    """The remote side (or our own budget) says: not now, come back after ``wait_seconds``."""

    def __init__(self, message: str, wait_seconds: float) -> None:
        self.wait_seconds = wait_seconds
        super().__init__(f"{message} (wait {wait_seconds:.1f}s)")
