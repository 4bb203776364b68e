"""Front emulator. For now: the webhook side (application and rule webhooks, signed with
Front's algorithms, delivered at least once with configurable duplicates and retries).
The Core API side comes with the emulators issue."""

from emulators.front._events import inbound_email_event
from emulators.front._webhooks import WebhookEmitter, sign_app, sign_rule

__all__ = ["WebhookEmitter", "inbound_email_event", "sign_app", "sign_rule"]
