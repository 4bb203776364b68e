"""The public API's route table and path matching.

One table (``ROUTES``) drives dispatch *and* the spec-conformance tests: each entry names
the spec operation it implements, so tests can check that every served route exists in
Front's OpenAPI document and has been validated against it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from emulators.front import _api_accounts, _api_company, _api_contacts, _api_conversations
from emulators.front._context import Ctx, Reply
from emulators.front._errors import FrontError

__all__ = ["ROUTES", "Route", "match"]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Callable[[Ctx], Reply]
    operation_id: str
    # Tier-2 per-resource burst guard keyed by the conversation id (fact sheet §6.2).
    tier2: bool
    pattern: re.Pattern[str]


def _compile(template: str) -> re.Pattern[str]:
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return re.compile(f"^{regex}/?$")


# Literal paths come before parameterised siblings (/contacts/merge before /contacts/{id}).
ROUTES: list[Route] = [
    Route(m, t, h, op, tier2, _compile(t))
    for m, t, h, op, tier2 in (*_api_company.ROUTES, *_api_contacts.ROUTES,
                               *_api_accounts.ROUTES, *_api_conversations.ROUTES)
]


def match(method: str, path: str) -> tuple[Route, dict[str, str]]:
    allowed = False
    for route in ROUTES:
        found = route.pattern.match(path)
        if found is None:
            continue
        if route.method == method or (method == "HEAD" and route.method == "GET"):
            return route, found.groupdict()
        allowed = True
    if allowed:
        raise FrontError(405, f"Method {method} is not allowed on {path}")
    raise FrontError(404, f"Unknown route {path}")
