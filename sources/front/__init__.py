"""Front source: the signed webhook receiver, and the Events API for backfill and gap-fill."""

from sources.front._backfill import BackfillResult, backfill
from sources.front._normalize import UnsupportedEvent, event_key, normalize_event
from sources.front._receiver import create_receiver_app
from sources.front._signature import (
    SignatureError,
    verify_app_webhook,
    verify_rule_webhook,
)

__all__ = [
    "BackfillResult",
    "backfill",
    "event_key",
    "SignatureError",
    "UnsupportedEvent",
    "create_receiver_app",
    "normalize_event",
    "verify_app_webhook",
    "verify_rule_webhook",
]
