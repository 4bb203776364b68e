"""Salesforce source: facts about synced records onto ``salesforce.changes``.

For now an initial SOQL load (snapshot); CDC or a SystemModstamp poller come next.
"""

from sources.salesforce._load import load_snapshot, to_change

__all__ = ["load_snapshot", "to_change"]
