"""streams/: the Faust app. Keeps the record-match table fed from Salesforce changes, joins
Front events with it and emits commands. Never calls an outside API."""

from streams._app import create_app
from streams._matching import choose_match, counterpart_handles, normalize_email, record_update
from streams._rules import task_command

__all__ = [
    "choose_match",
    "counterpart_handles",
    "create_app",
    "normalize_email",
    "record_update",
    "task_command",
]
