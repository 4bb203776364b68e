"""sources/: turn the outside world (Front webhooks and events, Salesforce changes) into
facts on Kafka."""
