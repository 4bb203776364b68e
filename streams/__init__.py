"""streams/: the Faust app. Keeps the record-match table fed from Salesforce changes, joins
Front events with it and emits commands. Never calls an outside API."""

from streams._app import create_app
from streams._matching import choose_match, counterpart_handles, match_entries, normalize_email
from streams._rules import task_command

__all__ = [
    "choose_match",
    "counterpart_handles",
    "create_app",
    "match_entries",
    "normalize_email",
    "task_command",
]
