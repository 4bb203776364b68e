"""Salesforce's Pub/Sub API contract, ``eventbus.v1``: the proto and its Python stubs.

``pubsub_api.proto`` is Salesforce's own file (forcedotcom/pub-sub-api, CC0), copied
unchanged. ``pubsub_api_pb2.py`` and ``pubsub_api_pb2_grpc.py`` are generated from it by
grpcio-tools in the Makefile's venv step (``make venv``); they are git-ignored, so the stubs
always match the pinned grpcio/protobuf runtime.

This package is neither product nor emulator: it is the public contract both speak, the
way ``requests`` or ``fastavro`` are libraries both use. The CDC source (``sources/``) and
the Salesforce emulator (``emulators/``) import it; it imports nothing of either. One
module for both also matters technically: protobuf registers every message name once per
process, so two generated copies of the same proto cannot be imported side by side.
"""

from __future__ import annotations

try:
    from eventbus import pubsub_api_pb2, pubsub_api_pb2_grpc
except ImportError as exc:  # pragma: no cover - a clone that skipped `make venv`
    raise ImportError(
        "eventbus/pubsub_api_pb2*.py are missing: they are generated from "
        "eventbus/pubsub_api.proto by `make venv` (grpcio-tools)") from exc

__all__ = ["pubsub_api_pb2", "pubsub_api_pb2_grpc"]
