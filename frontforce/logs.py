"""Logging: structlog key=value lines on stderr. Never log a secret; log Kafka coordinates
as ``topic[partition]@offset`` and one correlation id per fact."""

from __future__ import annotations

import logging
import sys

import structlog


def setup(level: str = "INFO") -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(message)s")
    for noisy in ("aiokafka", "faust", "mode", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"]),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def coords(topic: str, partition: int, offset: int) -> str:
    return f"{topic}[{partition}]@{offset}"
