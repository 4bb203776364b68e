"""Salesforce source: facts about synced records onto ``salesforce.changes``.

- ``run_source`` (``frontforce source salesforce``): Change Data Capture over the Pub/Sub
  API, replay id on ``source.cursors`` after the changes before it were acknowledged, gap
  events and expired replay ids filled by SOQL re-reads (``_source``).
- ``load_snapshot`` (``frontforce load salesforce``): the initial SOQL load, handed over to
  the subscription without a hole (``_load``).
"""

from sources.salesforce._changes import from_event, from_row
from sources.salesforce._load import load_snapshot
from sources.salesforce._source import run_source

__all__ = ["from_event", "from_row", "load_snapshot", "run_source"]
