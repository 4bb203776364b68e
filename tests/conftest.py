"""Test fixtures: one real Kafka broker and one real Apicurio registry per session, started
by the project's own deploy/stack.sh on free ports with a throw-away state directory, and
stopped at the end. Each pipeline test module gets fresh topic names, consumer groups and
its own Salesforce emulator, so tests never see each other's records."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontforce.localstack import LocalStack, Ports, free_port


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state = tmp_path_factory.mktemp("infra")
    stack = LocalStack(
        state_dir=state,
        stack_state=state / "stack",
        ports=Ports(kafka=free_port(), controller=free_port(), registry=free_port()),
        persist=False,
    )
    stack.start_infra()
    try:
        yield stack
    finally:
        stack.stop_infra()


def new_pipeline(infra: LocalStack, state_dir: Path) -> LocalStack:
    """A pipeline with its own topics, groups, emulator and processes on the shared infra."""
    tag = uuid.uuid4().hex[:8]
    return dataclasses.replace(
        infra,
        state_dir=state_dir,
        ports=dataclasses.replace(infra.ports, salesforce=free_port(), receiver=free_port(),
                                  front=free_port()),
        topic_prefix=f"t{tag}.",
        app_id=f"ff-{tag}",
        procs={},
    )
