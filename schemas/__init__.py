"""Avro contracts of every topic, one ``.avsc`` per subject (``<topic>-value``).

The files are the source of truth; this module only finds and loads them.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

__all__ = ["COMMAND_TOPICS", "SCHEMA_FILES", "WORKER_SCHEMA_FILES", "load_schema", "load_schema_str"]

# logical topic name (without prefix) -> schema file
SCHEMA_FILES: dict[str, str] = {
    "front.events": "front_event.avsc",
    "salesforce.changes": "salesforce_change.avsc",
    "commands.salesforce": "salesforce_command.avsc",
    "commands.front": "front_command.avsc",
    "audit": "audit.avsc",
    "deadletter": "deadletter.avsc",
    "deadletter.redriven": "deadletter_redrive.avsc",
    "source.cursors": "source_cursor.avsc",
    "front.ledger": "sink_ledger.avsc",
    "salesforce.ledger": "sink_ledger.avsc",
}

# Internal topics of the stream worker (named after its app id, see Settings.worker_topics)
# -> schema file. Wire format there too, so any tool can inspect a worker's traffic.
WORKER_SCHEMA_FILES: dict[str, str] = {
    "match_keys": "match_entry.avsc",
    "match_table": "match_candidates.avsc",
    "conversation_table": "worker_state.avsc",
    "case_links_table": "worker_state.avsc",
    "record_table": "record_state.avsc",
    "reference_table": "match_candidates.avsc",
    "by_account": "salesforce_change.avsc",
    "tags_by_account": "front_event.avsc",
    "context_table": "account_context.avsc",
    "seen": "seen_events.avsc",
    "case_events": "front_event.avsc",
    "waiting_table": "waiting_events.avsc",
    "release": "worker_state.avsc",
    "contact_notes": "front_contact.avsc",
    "front_contact_table": "front_contact.avsc",
    "by_contact": "front_event.avsc",
    "new_handles": "worker_state.avsc",
}

# Topics whose operation field is a union of records: decoded with return_record_name so a
# reader knows which operation it holds.
COMMAND_TOPICS = frozenset({"commands.salesforce", "commands.front"})


@cache
def load_schema_str(logical_topic: str) -> str:
    name = SCHEMA_FILES.get(logical_topic) or WORKER_SCHEMA_FILES[logical_topic]
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def load_schema(logical_topic: str) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(load_schema_str(logical_topic))
    return parsed
