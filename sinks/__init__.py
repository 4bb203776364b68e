"""sinks/: execute commands against the outside APIs, idempotently, in batches, within
their rate limits; dead-letter what is permanently wrong; audit every outcome."""
