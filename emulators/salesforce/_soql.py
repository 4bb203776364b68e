"""SOQL subset: tokenizer and recursive-descent parser producing a small AST.

Covers fact sheet §3: SELECT fields / relationship paths / COUNT() / FIELDS(...) / child
subqueries, FROM, WHERE (comparison, LIKE, [NOT] IN incl. semi-join, INCLUDES/EXCLUDES,
AND/OR/NOT, parentheses, null, booleans, numbers, strings, date/datetime and date literals),
ORDER BY (ASC/DESC, NULLS FIRST/LAST), LIMIT, OFFSET. Anything else is MALFORMED_QUERY.
Type checking against the schema happens in ``_query``; this module knows no schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from emulators.salesforce._errors import SfError, malformed_query

__all__ = [
    "And",
    "Compare",
    "Count",
    "FieldRef",
    "Fields",
    "InList",
    "Literal",
    "Not",
    "Or",
    "OrderItem",
    "Query",
    "SemiJoin",
    "SubQuery",
    "like_regex",
    "parse",
]

_KEYWORDS = frozenset({
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "INCLUDES", "EXCLUDES",
    "ORDER", "BY", "ASC", "DESC", "NULLS", "FIRST", "LAST", "LIMIT", "OFFSET", "NULL",
    "TRUE", "FALSE", "GROUP", "HAVING", "WITH", "FOR", "USING", "TYPEOF",
})
_DATE_LITERALS = frozenset({"TODAY", "YESTERDAY", "TOMORROW"})
_DATE_N_LITERALS = frozenset({"LAST_N_DAYS", "NEXT_N_DAYS", "N_DAYS_AGO"})
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\dT]))
  | (?P<number>[+-]?\d+(?:\.\d+)?(?![\w.]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>!=|<>|<=|>=|=|<|>|\(|\)|,|:)
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'",
            "\\": "\\"}


# --------------------------------------------------------------------------- AST
@dataclass(frozen=True)
class Literal:
    # string | number | boolean | null | date | datetime | dateliteral | like (regex source)
    kind: str
    value: Any
    raw: str = ""


@dataclass(frozen=True)
class FieldRef:
    path: tuple[str, ...]  # as written, e.g. ("Account", "Owner", "Email")

    @property
    def text(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class Count:
    field: FieldRef | None
    alias: str | None


@dataclass(frozen=True)
class Fields:
    kind: str  # ALL | STANDARD | CUSTOM


@dataclass
class Compare:
    field: FieldRef
    op: str  # = != < <= > >= LIKE
    value: Literal


@dataclass
class InList:
    field: FieldRef
    values: list[Literal]
    negated: bool
    op: str = "IN"  # IN | INCLUDES | EXCLUDES


@dataclass
class SemiJoin:
    field: FieldRef
    query: Query
    negated: bool


@dataclass
class And:
    items: list[Any]


@dataclass
class Or:
    items: list[Any]


@dataclass
class Not:
    item: Any


@dataclass
class OrderItem:
    field: FieldRef
    descending: bool
    nulls_last: bool


@dataclass
class SubQuery:
    query: Query


@dataclass
class Query:
    select: list[Any]
    from_: str
    where: Any = None
    order_by: list[OrderItem] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None


# --------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int

    @property
    def upper(self) -> str:
        return self.text.upper()


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise _error(text, pos, text[pos])
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(_Tok(kind, match.group(), pos))
        pos = match.end()
    tokens.append(_Tok("eof", "<EOF>", len(text)))
    return tokens


def _error(text: str, pos: int, token: str) -> SfError:
    # Same layout as Salesforce: the query, a caret, the position, then the reason.
    line_start = text.rfind("\n", 0, pos) + 1
    row = text.count("\n", 0, pos) + 1
    col = pos - line_start + 1
    caret = " " * (col - 1) + "^"
    snippet = text[line_start:].split("\n", 1)[0]
    return malformed_query(
        f"\n{snippet}\n{caret}\nERROR at Row:{row}:Column:{col}\nunexpected token: {token}"
    )


def _unescape(raw: str) -> str:
    """Decode a quoted literal; ``\\%`` and ``\\_`` are plain ``%``/``_`` outside LIKE."""
    return "".join(text for text, _ in _chars(raw))


def like_regex(raw: str) -> str:
    """Regex source for a quoted LIKE pattern: ``%`` any run, ``_`` one char, ``\\`` escapes."""
    out = []
    for text, escaped in _chars(raw):
        if not escaped and text == "%":
            out.append(".*")
        elif not escaped and text == "_":
            out.append(".")
        else:
            out.append(re.escape(text))
    return "".join(out)


def _chars(raw: str) -> list[tuple[str, bool]]:
    body = raw[1:-1]
    out: list[tuple[str, bool]] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append((_ESCAPES.get(nxt, nxt), True))
            i += 2
        else:
            out.append((ch, False))
            i += 1
    return out


# --------------------------------------------------------------------------- parser
class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    # helpers
    def peek(self, offset: int = 0) -> _Tok:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def next(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def fail(self, tok: _Tok | None = None) -> SfError:
        tok = tok or self.peek()
        return _error(self.text, tok.pos, tok.text)

    def at_kw(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind == "ident" and tok.upper in words

    def expect_kw(self, word: str) -> _Tok:
        if not self.at_kw(word):
            raise self.fail()
        return self.next()

    def at_op(self, op: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.text == op

    def expect_op(self, op: str) -> _Tok:
        if not self.at_op(op):
            raise self.fail()
        return self.next()

    def ident(self) -> str:
        tok = self.peek()
        if tok.kind != "ident" or tok.upper in _KEYWORDS:
            raise self.fail()
        return self.next().text

    def integer(self) -> int:
        tok = self.next()
        if tok.kind != "number" or not tok.text.lstrip("+").isdigit():
            raise self.fail(tok)
        return int(tok.text)

    # grammar
    def query(self, nested: bool = False) -> Query:
        self.expect_kw("SELECT")
        select = self.select_list()
        self.expect_kw("FROM")
        q = Query(select=select, from_=self.ident())
        if self.at_kw("WHERE"):
            self.next()
            q.where = self.condition()
        if self.at_kw("GROUP", "HAVING", "WITH", "USING", "TYPEOF"):
            tok = self.peek()
            raise malformed_query(f"{tok.upper} is not supported by the Salesforce emulator")
        if self.at_kw("ORDER"):
            self.next()
            self.expect_kw("BY")
            q.order_by = self.order_list()
        if self.at_kw("LIMIT"):
            self.next()
            q.limit = self.integer()
        if self.at_kw("OFFSET"):
            self.next()
            q.offset = self.integer()
        if self.at_kw("FOR"):
            # FOR VIEW / FOR REFERENCE / FOR UPDATE do not change results here.
            self.next()
            if not self.at_kw("VIEW", "REFERENCE", "UPDATE"):
                raise self.fail()
            self.next()
        end = self.peek()
        if nested and not (end.kind == "op" and end.text == ")"):
            raise self.fail()
        if not nested and end.kind != "eof":
            raise self.fail()
        return q

    def select_list(self) -> list[Any]:
        items = [self.select_item()]
        while self.at_op(","):
            self.next()
            items.append(self.select_item())
        return items

    def select_item(self) -> Any:
        tok = self.peek()
        if self.at_op("("):
            self.next()
            sub = self.query(nested=True)
            self.expect_op(")")
            return SubQuery(sub)
        if tok.kind == "ident" and tok.upper == "COUNT" and self.peek(1).text == "(":
            self.next()
            self.next()
            target = None if self.at_op(")") else FieldRef(tuple(self.ident().split(".")))
            self.expect_op(")")
            alias = None
            nxt = self.peek()
            if nxt.kind == "ident" and nxt.upper not in _KEYWORDS:
                alias = self.next().text
            return Count(target, alias)
        if tok.kind == "ident" and tok.upper == "FIELDS" and self.peek(1).text == "(":
            self.next()
            self.next()
            kind = self.next()
            if kind.upper not in ("ALL", "STANDARD", "CUSTOM"):
                raise self.fail(kind)
            self.expect_op(")")
            return Fields(kind.upper)
        return FieldRef(tuple(self.ident().split(".")))

    def condition(self) -> Any:
        first = self.term()
        if not self.at_kw("AND", "OR"):
            return first
        joiner = self.peek().upper
        items = [first]
        while self.at_kw("AND", "OR"):
            # SOQL refuses mixed AND/OR at one level: parentheses are mandatory.
            if self.peek().upper != joiner:
                raise self.fail()
            self.next()
            items.append(self.term())
        return And(items) if joiner == "AND" else Or(items)

    def term(self) -> Any:
        if self.at_kw("NOT"):
            self.next()
            return Not(self.term())
        if self.at_op("("):
            self.next()
            inner = self.condition()
            self.expect_op(")")
            return inner
        return self.simple()

    def simple(self) -> Any:
        ref = FieldRef(tuple(self.ident().split(".")))
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("=", "!=", "<>", "<", "<=", ">", ">="):
            self.next()
            return Compare(ref, "!=" if tok.text == "<>" else tok.text, self.literal())
        if self.at_kw("LIKE"):
            self.next()
            tok = self.peek()
            if tok.kind != "string":
                raise self.fail()
            self.next()
            return Compare(ref, "LIKE", Literal("like", like_regex(tok.text), tok.text))
        negated = False
        if self.at_kw("NOT"):
            self.next()
            negated = True
            if not self.at_kw("IN"):
                raise self.fail()
        if self.at_kw("IN", "INCLUDES", "EXCLUDES"):
            op = self.next().upper
            if negated and op != "IN":
                raise self.fail()
            self.expect_op("(")
            if op == "IN" and self.at_kw("SELECT"):
                sub = self.query(nested=True)
                self.expect_op(")")
                return SemiJoin(ref, sub, negated)
            values = [self.literal()]
            while self.at_op(","):
                self.next()
                values.append(self.literal())
            self.expect_op(")")
            return InList(ref, values, negated, op)
        raise self.fail()

    def literal(self) -> Literal:
        tok = self.next()
        if tok.kind == "string":
            return Literal("string", _unescape(tok.text), tok.text)
        if tok.kind == "number":
            number = float(tok.text) if "." in tok.text else int(tok.text)
            return Literal("number", number, tok.text)
        if tok.kind == "date":
            return Literal("date", tok.text, tok.text)
        if tok.kind == "datetime":
            return Literal("datetime", tok.text, tok.text)
        if tok.kind == "ident":
            word = tok.upper
            if word in ("TRUE", "FALSE"):
                return Literal("boolean", word == "TRUE", tok.text)
            if word == "NULL":
                return Literal("null", None, tok.text)
            if word in _DATE_LITERALS:
                return Literal("dateliteral", (word, 0), tok.text)
            if word in _DATE_N_LITERALS and self.at_op(":"):
                self.next()
                return Literal("dateliteral", (word, self.integer()), tok.text)
        raise self.fail(tok)

    def order_list(self) -> list[OrderItem]:
        items = []
        while True:
            ref = FieldRef(tuple(self.ident().split(".")))
            descending = False
            if self.at_kw("ASC", "DESC"):
                descending = self.next().upper == "DESC"
            # Salesforce default: nulls first ascending, nulls last descending.
            nulls_last = descending
            if self.at_kw("NULLS"):
                self.next()
                if not self.at_kw("FIRST", "LAST"):
                    raise self.fail()
                nulls_last = self.next().upper == "LAST"
            items.append(OrderItem(ref, descending, nulls_last))
            if not self.at_op(","):
                return items
            self.next()


def parse(text: str) -> Query:
    if not isinstance(text, str) or not text.strip():
        raise malformed_query("Query string must not be empty")
    return _Parser(text).query()
