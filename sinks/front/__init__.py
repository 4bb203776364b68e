"""Front sink: ``commands.front`` -> Front Core API, coalesced per conversation and contact
inside a flush window, made idempotent by a ledger on ``front.ledger``."""

from sinks.front._ledger import Ledger
from sinks.front._sink import FrontSink, run_sink

__all__ = ["FrontSink", "Ledger", "run_sink"]
