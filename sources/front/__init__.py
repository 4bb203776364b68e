"""Front source: the signed webhook receiver (and, later, the Events API poller)."""

from sources.front._normalize import UnsupportedEvent, normalize_event
from sources.front._receiver import create_receiver_app
from sources.front._signature import (
    SignatureError,
    verify_app_webhook,
    verify_rule_webhook,
)

__all__ = [
    "SignatureError",
    "UnsupportedEvent",
    "create_receiver_app",
    "normalize_event",
    "verify_app_webhook",
    "verify_rule_webhook",
]
