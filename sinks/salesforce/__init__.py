"""Salesforce sink: ``commands.salesforce`` -> Salesforce REST (sObject Collections)."""

from sinks.salesforce._errors import classify_item_error
from sinks.salesforce._sink import SalesforceSink, run_sink

__all__ = ["SalesforceSink", "classify_item_error", "run_sink"]
