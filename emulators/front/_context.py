"""What a public-API handler receives (``Ctx``) and returns (``Reply``), plus body helpers.

Handlers are plain synchronous functions run under the state lock; they never see HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from emulators.front._errors import bad_request
from emulators.front._ops import Actor
from emulators.front._query import Query
from emulators.front._store import FrontState

__all__ = ["NO_BODY", "Ctx", "Reply", "listing", "validate_custom_fields"]

NO_BODY: Any = object()


@dataclass
class Reply:
    status: int = 200
    body: Any = NO_BODY
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Ctx:
    state: FrontState
    actor: Actor
    method: str
    path: str
    params: dict[str, str]
    query: Query
    body: Any = NO_BODY

    def obj(self, required: bool = True) -> dict[str, Any]:
        if self.body is NO_BODY and not required:
            return {}
        if not isinstance(self.body, dict):
            raise bad_request("Body must be a JSON object")
        return self.body

    def field(self, name: str, kind: type | tuple[type, ...], required: bool = False,
              default: Any = None) -> Any:
        body = self.obj()
        if name not in body:
            if required:
                raise bad_request(f"{name} is required", [f"{name}: required"])
            return default
        value = body[name]
        # bool is an int in Python; Front's number fields do not take true/false.
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise bad_request(f"{name} has the wrong type", [f"{name}: invalid type"])
        return value

    def str_list(self, name: str, max_items: int | None = None) -> list[str] | None:
        value = self.field(name, list)
        if value is None:
            return None
        if not all(isinstance(v, str) for v in value):
            raise bad_request(f"{name} must be an array of strings")
        if max_items is not None and len(value) > max_items:
            raise bad_request(f"{name} accepts at most {max_items} items")
        return list(value)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def listing(path: str, results: Sequence[Any], next_url: str | None = None,
            paginated: bool = True) -> Reply:
    body: dict[str, Any] = {}
    if paginated:
        body["_pagination"] = {"next": next_url}
    body["_links"] = {"self": path}
    body["_results"] = list(results)
    return Reply(200, body)


def validate_custom_fields(state: FrontState, resource: str, value: Any) -> dict[str, Any]:
    """Custom fields are keyed by display name and typed by their definition (fact sheet
    §3.5). Unknown names and wrong types are a 400, as on Front; null clears a field."""
    if not isinstance(value, dict):
        raise bad_request("custom_fields must be an object")
    defs = {d["name"]: d for d in state.custom_fields.get(resource, [])}
    errors, out = [], {}
    for name, v in value.items():
        d = defs.get(name)
        if d is None:
            errors.append(f"custom_fields.{name}: unknown custom field")
            continue
        if v is None:
            continue
        if not _type_ok(state, d, v):
            errors.append(f"custom_fields.{name}: expected a {d['type']} value")
            continue
        out[name] = v
    if errors:
        raise bad_request("Invalid custom field value", errors)
    return out


def _type_ok(state: FrontState, d: dict[str, Any], v: Any) -> bool:
    kind = d["type"]
    number = isinstance(v, int | float) and not isinstance(v, bool)
    if kind == "string":
        return isinstance(v, str)
    if kind == "boolean":
        return isinstance(v, bool)
    if kind in ("number", "datetime"):
        return number
    if kind == "teammate":
        return isinstance(v, str) and any(v in (t["id"], t["email"])
                                          for t in state.teammates.values())
    if kind == "inbox":
        return isinstance(v, str) and v in state.inboxes
    if kind == "enum":
        return isinstance(v, str) and v in {x["value"] for x in d.get("values", [])}
    return False
