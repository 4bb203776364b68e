"""Execute parsed SOQL against OrgState.

Semantics mirrored from the fact sheet (§3): text comparisons are case-insensitive, ids match
in 15- or 18-char form, ``!=``/``NOT IN`` match nulls, datetime literals are unquoted and only
compare with datetime fields, relationship paths return nested objects with their own
``attributes`` (``null`` for an empty lookup), ``queryAll`` also returns deleted rows.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulators.salesforce._errors import SfError, invalid_field, invalid_type, malformed_query
from emulators.salesforce._ids import canonical_id
from emulators.salesforce._schema import NUMBER_TYPES, TEXT_TYPES, FieldDef, SObjectDef, get_sobject
from emulators.salesforce._soql import (
    And,
    Compare,
    Count,
    FieldRef,
    Fields,
    InList,
    Literal,
    Not,
    Or,
    Query,
    SemiJoin,
    SubQuery,
    parse,
)
from emulators.salesforce._timefmt import parse_date, parse_datetime
from emulators.salesforce._writes import Ctx, find_record, record_url

__all__ = ["QueryResult", "run_query"]

_MAX_OFFSET = 2000
_FIELDS_LIMIT = 200
# Fields of the polymorphic "Name" pseudo-object reachable through Who/What/Owner-like lookups.
_NAME_FIELDS: dict[str, FieldDef] = {f.name.lower(): f for f in (
    FieldDef("Id", "id"), FieldDef("Name", "string"), FieldDef("FirstName", "string"),
    FieldDef("LastName", "string"), FieldDef("Email", "email"), FieldDef("Phone", "phone"),
    FieldDef("Title", "string"), FieldDef("Alias", "string"), FieldDef("Username", "string"),
    FieldDef("IsActive", "boolean"), FieldDef("Type", "string"),
)}


@dataclass
class QueryResult:
    records: list[dict[str, Any]]
    total_size: int


@dataclass(frozen=True)
class _Path:
    """A resolved field path: lookups to traverse, then the final field."""

    rels: tuple[FieldDef, ...]
    field: FieldDef

    @property
    def polymorphic_tail(self) -> bool:
        return bool(self.rels) and self.rels[-1].polymorphic


def _no_such_column(name: str, sobj: SObjectDef) -> SfError:
    return invalid_field(
        f"No such column '{name}' on entity '{sobj.name}'. If you are attempting to use a "
        "custom field, be sure to append the '__c' after the custom field name. Please "
        "reference your WSDL or the describe call for the appropriate names.")


def _resolve(sobj: SObjectDef, ref: FieldRef) -> _Path:
    current: SObjectDef | None = sobj
    rels: list[FieldDef] = []
    for i, part in enumerate(ref.path[:-1]):
        if current is None:  # traversing past a polymorphic lookup
            raise invalid_field(f"Didn't understand relationship '{'.'.join(ref.path[:i])}' "
                                f"in field path. Polymorphic lookups allow one more level.")
        rel = current.relationship(part)
        if rel is None:
            raise invalid_field(
                f"Didn't understand relationship '{part}' in field path. If you are attempting "
                "to use a custom relationship, be sure to append the '__r' after the custom "
                "relationship name. Please reference your WSDL or the describe call for the "
                "appropriate names.")
        rels.append(rel)
        current = get_sobject(rel.reference_to[0]) if not rel.polymorphic else None
    last = ref.path[-1]
    if current is None:
        fd = _NAME_FIELDS.get(last.lower())
        if fd is None:
            raise invalid_field(f"No such column '{last}' on entity 'Name'.")
        return _Path(tuple(rels), fd)
    # Ordering on the relationship name alone (e.g. "Owner") is not allowed in SOQL either.
    found = current.field(last)
    if found is None:
        raise _no_such_column(last, current)
    return _Path(tuple(rels), found)


class _Executor:
    def __init__(self, ctx: Ctx, include_deleted: bool) -> None:
        self.ctx = ctx
        self.include_deleted = include_deleted
        # Date literals (TODAY, LAST_N_DAYS:n) resolve in the org's clock, UTC.
        self.today = ctx.state.now().date()
        self._semi_joins: dict[int, set[str]] = {}
        self._wanted: dict[int, set[Any]] = {}  # an IN list's normalised values, per condition

    # -------------------------------------------------------------- value access
    def follow(self, record: dict[str, Any], rel: FieldDef) -> tuple[str, dict[str, Any]] | None:
        target = record.get(rel.name)
        if target is None:
            return None
        # A parent in the recycle bin is not visible through a lookup.
        return find_record(self.ctx, target)

    def value(self, type_: str, record: dict[str, Any], path: _Path) -> Any:
        current_type, current = type_, record
        for rel in path.rels:
            nxt = self.follow(current, rel)
            if nxt is None:
                return None
            current_type, current = nxt
        if path.polymorphic_tail:
            return _name_object_value(current_type, current, path.field.name)
        return current.get(path.field.name)

    # -------------------------------------------------------------- filtering
    def matches(self, sobj: SObjectDef, record: dict[str, Any], cond: Any) -> bool:
        if cond is None:
            return True
        if isinstance(cond, And):
            return all(self.matches(sobj, record, c) for c in cond.items)
        if isinstance(cond, Or):
            return any(self.matches(sobj, record, c) for c in cond.items)
        if isinstance(cond, Not):
            return not self.matches(sobj, record, cond.item)
        if isinstance(cond, Compare):
            path = _resolve(sobj, cond.field)
            value = self.value(sobj.name, record, path)
            return _compare(path.field, value, cond.op, cond.value, self.today)
        if isinstance(cond, InList):
            path = _resolve(sobj, cond.field)
            value = self.value(sobj.name, record, path)
            wanted = self._wanted.get(id(cond))
            if wanted is None:
                wanted = self._wanted[id(cond)] = {_normalise(path.field, lit.value)
                                                   for lit in cond.values}
            return _in_list(path.field, value, cond, wanted)
        if isinstance(cond, SemiJoin):
            path = _resolve(sobj, cond.field)
            value = self.value(sobj.name, record, path)
            ids = self.semi_join_ids(cond)
            hit = value is not None and value in ids
            return hit != cond.negated
        raise malformed_query("unsupported condition")

    def semi_join_ids(self, cond: SemiJoin) -> set[str]:
        cached = self._semi_joins.get(id(cond))
        if cached is not None:
            return cached
        sub = cond.query
        if len(sub.select) != 1 or not isinstance(sub.select[0], FieldRef):
            raise malformed_query("Semi-join sub-selects must select exactly one id field")
        inner = _Executor(self.ctx, False)
        sobj = _sobject(sub.from_)
        path = _resolve(sobj, sub.select[0])
        if path.field.type not in ("id", "reference"):
            raise malformed_query("Semi-join sub-selects must select an id field")
        rows = inner.rows(sobj, sub)
        ids = {v for _, r in rows if (v := inner.value(sobj.name, r, path)) is not None}
        self._semi_joins[id(cond)] = ids  # the inner query runs once per execution
        return ids

    # -------------------------------------------------------------- rows
    def rows(self, sobj: SObjectDef, q: Query,
             base: list[dict[str, Any]] | None = None) -> list[tuple[str, dict[str, Any]]]:
        if base is None and not self.include_deleted:
            base = self._indexed(sobj, q.where)
        table = base if base is not None else list(self.ctx.state.tables[sobj.name].values())
        if not self.include_deleted:
            table = [r for r in table if not r["IsDeleted"]]
        _validate_condition(sobj, q.where)
        selected = [r for r in table if self.matches(sobj, r, q.where)]
        # Stable multi-key sort: apply keys from last to first.
        for item in reversed(q.order_by):
            path = _resolve(sobj, item.field)
            present = [r for r in selected if self.value(sobj.name, r, path) is not None]
            nulls = [r for r in selected if self.value(sobj.name, r, path) is None]
            present.sort(key=self._sort_key_for(sobj.name, path), reverse=item.descending)
            selected = present + nulls if item.nulls_last else nulls + present
        if not q.order_by:
            # Salesforce gives no order guarantee; creation order keeps paging stable.
            selected.sort(key=lambda r: (r["CreatedDate"] or "", r["Id"]))
        if q.offset:
            if q.offset > _MAX_OFFSET:
                raise SfError(400, "NUMBER_OUTSIDE_VALID_RANGE",
                              f"Maximum SOQL offset allowed is {_MAX_OFFSET}")
            selected = selected[q.offset:]
        if q.limit is not None:
            selected = selected[: q.limit]
        return [(sobj.name, r) for r in selected]

    def _indexed(self, sobj: SObjectDef, cond: Any) -> list[dict[str, Any]] | None:
        """The live rows a condition can only match, read from the unique/external-id index
        (as Salesforce reads an indexed field), when it pins such a field of the queried
        object to string values: ``F = 'v'``, ``F IN ('v', ...)``, or one of those ANDed
        with anything. None: the whole table is scanned. Only a narrowing: ``matches`` still
        decides, so the answer is the scan's, at the cost of the candidates only."""
        if isinstance(cond, And):
            for item in cond.items:
                rows = self._indexed(sobj, item)
                if rows is not None:
                    return rows
            return None
        if isinstance(cond, Compare) and cond.op == "=":
            field, literals = cond.field, [cond.value]
        elif isinstance(cond, InList) and cond.op == "IN" and not cond.negated:
            field, literals = cond.field, cond.values
        else:
            return None
        if len(field.path) != 1 or any(lit.kind != "string" for lit in literals):
            return None
        fd = sobj.field(field.path[0])
        if fd is None or not (fd.unique or fd.external_id) or fd.type not in TEXT_TYPES:
            return None
        state = self.ctx.state
        table = state.tables[sobj.name]
        ids = {rid for lit in literals for rid in state.find_by_field(sobj.name, fd.name, lit.value)}
        return [table[rid] for rid in ids if rid in table]

    def _sort_key_for(self, type_: str, path: _Path) -> Callable[[dict[str, Any]], Any]:
        return lambda r: _sort_key(path.field, self.value(type_, r, path))

    # -------------------------------------------------------------- projection
    def project(self, sobj: SObjectDef, items: list[Any], type_: str,
                record: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"attributes": {"type": type_,
                                              "url": record_url(self.ctx, type_, record["Id"])}}
        for item in items:
            if isinstance(item, SubQuery):
                name, value = self.child_rows(sobj, item.query, record)
                out[name] = value
                continue
            path = _resolve(sobj, item)
            self.place(out, record, path)
        return out

    def place(self, out: dict[str, Any], record: dict[str, Any], path: _Path) -> None:
        node, current = out, record
        for rel in path.rels:
            name = rel.relationship_name or rel.name
            nxt = self.follow(current, rel)
            if nxt is None:
                node.setdefault(name, None)
                return
            child_type, child = nxt
            existing = node.get(name)
            if not isinstance(existing, dict):
                existing = {"attributes": {"type": child_type,
                                           "url": record_url(self.ctx, child_type, child["Id"])}}
                node[name] = existing
            node, current = existing, child
            if rel.polymorphic:
                node[path.field.name] = _name_object_value(child_type, child, path.field.name)
                return
        node[path.field.name] = current.get(path.field.name)

    def child_rows(self, parent: SObjectDef, sub: Query,
                   record: dict[str, Any]) -> tuple[str, Any]:
        found = parent.child_relationship(sub.from_)
        if found is None:
            raise invalid_field(
                f"Didn't understand relationship '{sub.from_}' in FROM part of query call.")
        child_name, fd = found
        child = _sobject(child_name)
        items = _expand_select(child, sub)
        base = [r for r in self.ctx.state.tables[child_name].values()
                if r[fd.name] == record["Id"]]
        rows = self.rows(child, sub, base)
        if not rows:
            return fd.child_relationship or sub.from_, None
        records = [self.project(child, items, t, r) for t, r in rows]
        return fd.child_relationship or sub.from_, {"totalSize": len(records), "done": True,
                                                    "records": records}


def _name_object_value(type_: str, record: dict[str, Any], field: str) -> Any:
    """Value of a field of the polymorphic ``Name`` object (Who.Name, What.Type, ...)."""
    if field == "Type":
        return type_
    if field == "Name" and "Name" not in record:
        # Objects without a Name field expose their name field instead (Case -> CaseNumber).
        sobj = get_sobject(type_)
        name_field = next((f.name for f in sobj.fields if f.name_field), None) if sobj else None
        return record.get(name_field) if name_field else None
    return record.get(field)


# ------------------------------------------------------------------ typing & comparison
def _sobject(name: str) -> SObjectDef:
    sobj = get_sobject(name)
    if sobj is None or not sobj.queryable:
        raise invalid_type(name)
    return sobj


def _validate_condition(sobj: SObjectDef, cond: Any) -> None:
    """Type-check literals against fields up front, like the real query compiler."""
    if cond is None:
        return
    if isinstance(cond, And | Or):
        for c in cond.items:
            _validate_condition(sobj, c)
    elif isinstance(cond, Not):
        _validate_condition(sobj, cond.item)
    elif isinstance(cond, Compare):
        fd = _resolve(sobj, cond.field).field
        if cond.op == "LIKE":
            if fd.type not in TEXT_TYPES and fd.type not in ("id", "reference"):
                raise SfError(400, "INVALID_FIELD",
                              f"invalid operator on field '{fd.name}': LIKE")
        else:
            _check_literal(fd, cond.value)
    elif isinstance(cond, InList):
        fd = _resolve(sobj, cond.field).field
        for lit in cond.values:
            _check_literal(fd, lit)
    elif isinstance(cond, SemiJoin):
        _resolve(sobj, cond.field)


def _type_error(fd: FieldDef, expected: str, quoted: bool) -> SfError:
    how = "should be enclosed in quotes" if quoted else "should not be enclosed in quotes"
    return SfError(400, "INVALID_FIELD",
                   f"value of filter criterion for field '{fd.name}' must be of type "
                   f"{expected} and {how}")


def _check_literal(fd: FieldDef, lit: Literal) -> None:
    if lit.kind == "null":
        return
    t = fd.type
    if t in TEXT_TYPES and lit.kind != "string":
        raise _type_error(fd, "string", True)
    if t in ("id", "reference"):
        if lit.kind != "string":
            raise _type_error(fd, "id", True)
        if canonical_id(lit.value) is None:
            raise SfError(400, "INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {lit.value}")
    if t in NUMBER_TYPES and lit.kind != "number":
        raise _type_error(fd, "double" if t != "int" else "int", False)
    if t == "boolean" and lit.kind != "boolean":
        raise _type_error(fd, "boolean", False)
    if t == "date" and lit.kind not in ("date", "dateliteral"):
        raise _type_error(fd, "date", False)
    if t == "datetime" and lit.kind not in ("datetime", "dateliteral"):
        raise _type_error(fd, "dateTime", False)


def _date_range(lit: Literal, today: dt.date) -> tuple[dt.datetime, dt.datetime]:
    word, n = lit.value
    day = dt.timedelta(days=1)
    starts = {
        "TODAY": (today, today + day),
        "YESTERDAY": (today - day, today),
        "TOMORROW": (today + day, today + 2 * day),
        "LAST_N_DAYS": (today - n * day, today + day),
        "NEXT_N_DAYS": (today + day, today + (n + 1) * day),
        "N_DAYS_AGO": (today - n * day, today - (n - 1) * day),
    }
    lo, hi = starts[word]
    return (dt.datetime.combine(lo, dt.time(), dt.UTC), dt.datetime.combine(hi, dt.time(), dt.UTC))


def _as_datetime(fd: FieldDef, value: Any) -> dt.datetime:
    if fd.type == "date":
        return dt.datetime.combine(parse_date(value), dt.time(), dt.UTC)
    return parse_datetime(value)


def _normalise(fd: FieldDef, value: Any) -> Any:
    """Comparable form of a stored value or literal for this field."""
    if value is None:
        return None
    if fd.type in ("id", "reference"):
        return canonical_id(value) or str(value)
    if fd.type in TEXT_TYPES:
        return str(value).lower()
    if fd.type == "datetime":
        return parse_datetime(value)
    if fd.type == "date":
        return parse_date(value)
    return value


def _compare(fd: FieldDef, value: Any, op: str, lit: Literal, today: dt.date) -> bool:
    if lit.kind == "like":
        if value is None:
            return False
        return re.fullmatch(lit.value, str(value), re.IGNORECASE | re.DOTALL) is not None
    if lit.kind == "null":
        return (value is None) if op == "=" else (value is not None) if op == "!=" else False
    if value is None:
        return op == "!="
    if lit.kind == "dateliteral":
        lo, hi = _date_range(lit, today)
        v = _as_datetime(fd, value)
        return {"=": lo <= v < hi, "!=": not lo <= v < hi, "<": v < lo, "<=": v < hi,
                ">": v >= hi, ">=": v >= lo}[op]
    left, right = _normalise(fd, value), _normalise(fd, lit.value)
    try:
        return {"=": left == right, "!=": left != right, "<": left < right,
                "<=": left <= right, ">": left > right, ">=": left >= right}[op]
    except TypeError:
        return False


def _in_list(fd: FieldDef, value: Any, cond: InList, wanted: set[Any]) -> bool:
    if cond.op in ("INCLUDES", "EXCLUDES"):
        have = {v.strip().lower() for v in str(value or "").split(";") if v.strip()}
        hit = any(set(str(w).split(";")) <= have for w in wanted if w is not None)
        return hit if cond.op == "INCLUDES" else not hit
    hit = _normalise(fd, value) in wanted
    return hit != cond.negated


def _sort_key(fd: FieldDef, value: Any) -> Any:
    return _normalise(fd, value)


# ------------------------------------------------------------------ select handling
def _expand_select(sobj: SObjectDef, q: Query) -> list[Any]:
    items: list[Any] = []
    seen: set[str] = set()
    for item in q.select:
        if isinstance(item, Fields):
            if item.kind != "STANDARD" and (q.limit is None or q.limit > _FIELDS_LIMIT):
                raise malformed_query(
                    f"The SOQL FIELDS function must have a LIMIT of at most {_FIELDS_LIMIT}")
            refs = [FieldRef((f.name,)) for f in sobj.fields
                    if item.kind == "ALL" or f.custom == (item.kind == "CUSTOM")]
        elif isinstance(item, Count):
            raise malformed_query("COUNT() cannot be combined with other fields")
        else:
            refs = [item]
        for ref in refs:
            key = ref.text.lower() if isinstance(ref, FieldRef) else f"({ref.query.from_})"
            if key in seen:
                raise malformed_query(f"duplicate field selected: {ref.text}"
                                      if isinstance(ref, FieldRef) else "duplicate subquery")
            seen.add(key)
            items.append(ref)
    return items


def run_query(ctx: Ctx, soql: str, *, include_deleted: bool) -> QueryResult:
    q = parse(soql)
    sobj = _sobject(q.from_)
    ex = _Executor(ctx, include_deleted)
    counts = [i for i in q.select if isinstance(i, Count)]
    if counts:
        if len(q.select) != 1:
            raise malformed_query("COUNT() cannot be combined with other fields")
        count = counts[0]
        rows = ex.rows(sobj, q)
        if count.field is None:
            return QueryResult([], len(rows))
        path = _resolve(sobj, count.field)
        n = sum(1 for t, r in rows if ex.value(t, r, path) is not None)
        return QueryResult([{"attributes": {"type": "AggregateResult"},
                             count.alias or "expr0": n}], 1)
    items = _expand_select(sobj, q)
    for item in items:  # fail fast on unknown columns even when no rows match
        if isinstance(item, FieldRef):
            _resolve(sobj, item)
        elif sobj.child_relationship(item.query.from_) is None:
            raise invalid_field(f"Didn't understand relationship '{item.query.from_}' in FROM "
                                "part of query call.")
    rows = ex.rows(sobj, q)
    return QueryResult([ex.project(sobj, items, t, r) for t, r in rows], len(rows))
