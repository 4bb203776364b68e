"""``python -m tests.broken_worker worker -c FILE``: the stream worker with the mistake its
recovery test must catch: each table's changelog topic is made before the table's Avro
codec is set (what the worker did until 2026-12-02), so the changelog is written in Avro
but read back as JSON, and a worker that takes over a partition with no local state
recovers nothing.

Guards test_pipeline's replacement-worker test against proving nothing: run against this
variant, a message from a Contact the old worker had indexed must not land on it.
"""

from __future__ import annotations

from typing import Any

from faust.tables.manager import TableManager

from frontforce.cli import main

_add = TableManager.add


def _add_with_json_changelog(self: TableManager, table: Any) -> Any:
    codec = table.value_serializer
    table.value_serializer = "json"
    table._changelog_topic = None
    table.changelog_topic  # noqa: B018 - made now, with the JSON serializer
    table.value_serializer = codec
    return _add(self, table)


TableManager.add = _add_with_json_changelog  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
