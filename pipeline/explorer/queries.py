"""Browse queries over one dataset's index: full-text search, typed filters, sort, pages, export.

Every column name and operator is checked against the index before it reaches SQL, and every
value is a bound parameter: the page's query string never becomes SQL text.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from pipeline.explorer.index import BOOL, NUMBER, TEXT, DatasetIndex, quote

COMPARISONS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
OPS = (*COMPARISONS, "in", "is_null", "not_null", "contains")
MAX_LIMIT = 500
LISTED_VALUES = 40  # a column with at most this many distinct values offers them as choices
FIRST_COLUMNS = ("preview", "benchmark", "problem_id", "extracted", "gold", "correct", "verdict", "error_kind",
                 "outcome", "reject_reason", "stage", "variant", "source_id", "id")
_TERM_RE = re.compile(r'"([^"]+)"|(\S+)')


class QueryError(ValueError):
    """A query the page cannot run (unknown column, bad operator or value): shown on the page."""


@dataclass
class Query:
    q: str = ""
    filters: list[dict[str, Any]] = field(default_factory=list)
    sort: str | None = None
    desc: bool = False
    offset: int = 0
    limit: int = 50

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "Query":
        try:
            filters = json.loads(params.get("filters") or "[]")
            offset, limit = int(params.get("offset") or 0), int(params.get("limit") or 50)
        except ValueError as err:
            raise QueryError(f"bad query parameter ({err})") from None
        if not isinstance(filters, list) or not all(isinstance(f, dict) for f in filters):
            raise QueryError("filters: expected a JSON list of {col, op, value}")
        if offset < 0 or not 1 <= limit <= MAX_LIMIT:
            raise QueryError(f"offset must be >= 0 and limit 1..{MAX_LIMIT}")
        return cls(params.get("q") or "", filters, params.get("sort") or None,
                   params.get("desc") in ("1", "true"), offset, limit)


def where(index: DatasetIndex, query: Query) -> tuple[str, list[Any]]:
    clauses, params = ["TRUE"], []
    for phrase, word in _TERM_RE.findall(query.q.lower()):
        clauses.append("contains(_search, ?)")
        params.append(phrase or word)
    for number, item in enumerate(query.filters):
        column, op, value = item.get("col"), item.get("op", "eq"), item.get("value")
        kind = index.types.get(column) if isinstance(column, str) else None
        if kind is None:
            raise QueryError(f"filters[{number}]: {index.dataset.name} has no column {column!r}")
        if op not in OPS:
            raise QueryError(f"filters[{number}]: unknown op {op!r} (one of {', '.join(OPS)})")
        name = quote(column)
        if op == "is_null":
            clauses.append(f"{name} IS NULL")
        elif op == "not_null":
            clauses.append(f"{name} IS NOT NULL")
        elif op == "contains":
            clauses.append(f"contains(lower(CAST({name} AS VARCHAR)), ?)")
            params.append(str(value).lower())
        elif op == "in":
            values = value if isinstance(value, list) else [value]
            if not values:
                raise QueryError(f"filters[{number}]: 'in' needs a list of values")
            clauses.append(f"{name} IN ({', '.join('?' * len(values))})")
            params += [typed(v, kind, number) for v in values]
        else:
            clauses.append(f"{name} {COMPARISONS[op]} ?")
            params.append(typed(value, kind, number))
    return " AND ".join(clauses), params


def typed(value: Any, kind: str, number: int) -> Any:
    try:
        if kind == NUMBER:
            return float(value)
        if kind == BOOL:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false", "1", "0"):
                return str(value).lower() in ("true", "1")
            raise ValueError(value)
    except (TypeError, ValueError):
        raise QueryError(f"filters[{number}]: {value!r} is not a {'number' if kind == NUMBER else 'true/false'}") from None
    return value if isinstance(value, str) else json.dumps(value)


def shown_columns(index: DatasetIndex) -> list[str]:
    names = list(index.types)
    return [c for c in FIRST_COLUMNS if c in index.types] + [c for c in names if c not in FIRST_COLUMNS]


def page(index: DatasetIndex, query: Query) -> dict[str, Any]:
    started = time.perf_counter()
    clause, params = where(index, query)
    columns = shown_columns(index)
    if query.sort is not None and query.sort not in index.types and query.sort != "_row":
        raise QueryError(f"sort: {index.dataset.name} has no column {query.sort!r}")
    order = f"{quote(query.sort)} {'DESC' if query.desc else 'ASC'} NULLS LAST, _row" if query.sort else "_row"
    cur = index.cursor()
    total = cur.execute(f"SELECT count(*) FROM records WHERE {clause}", params).fetchone()[0]
    selected = ", ".join(["_row", *map(quote, columns)])
    rows = cur.execute(f"SELECT {selected} FROM records WHERE {clause} ORDER BY {order} LIMIT ? OFFSET ?",
                       [*params, query.limit, query.offset]).fetchall()
    return {"total": total, "columns": columns,
            "rows": [dict(zip(["_row", *columns], map(plain, row))) for row in rows],
            "elapsed_ms": round(1000 * (time.perf_counter() - started), 1)}


def plain(value: Any) -> Any:
    """Whole numbers as ints: number columns are DOUBLE, but a sample index is 3, not 3.0."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**53 else value


def export(index: DatasetIndex, query: Query, batch: int = 1000) -> Iterator[str]:
    """The full records of every match, one JSON line each, in the page's order."""
    clause, params = where(index, query)
    order = f"{quote(query.sort)} {'DESC' if query.desc else 'ASC'} NULLS LAST, _row" \
        if query.sort in index.types else "_row"
    rows = [r[0] for r in index.cursor().execute(f"SELECT _row FROM records WHERE {clause} ORDER BY {order}",
                                                 params).fetchall()]
    for start in range(0, len(rows), batch):
        for record in index.records(rows[start : start + batch]):
            yield json.dumps(record, ensure_ascii=False) + "\n"


def column_info(index: DatasetIndex) -> list[dict[str, Any]]:
    """Each column's type, its values with counts when there are few, and min/max of numbers:
    one scan for the distinct counts, then one GROUP BY per listed column."""
    cur = index.cursor()
    names = shown_columns(index)
    if not names:
        return []
    stats = cur.execute("SELECT " + ", ".join(
        f"approx_count_distinct({quote(n)}), min({quote(n)}), max({quote(n)})" if index.types[n] == NUMBER
        else f"approx_count_distinct({quote(n)}), NULL, NULL" for n in names) + " FROM records").fetchone()
    info = []
    for k, name in enumerate(names):
        distinct, low, high = stats[3 * k : 3 * k + 3]
        kind = index.types[name]
        entry: dict[str, Any] = {"name": name, "type": {NUMBER: "number", BOOL: "bool", TEXT: "text"}[kind],
                                 "values": None, "min": plain(low), "max": plain(high)}
        if distinct <= LISTED_VALUES and name != "preview":
            rows = cur.execute(f"SELECT {quote(name)}, count(*) FROM records GROUP BY 1 ORDER BY 2 DESC, 1 "
                               f"LIMIT {LISTED_VALUES + 1}").fetchall()
            if len(rows) <= LISTED_VALUES:
                entry["values"] = [[plain(value), count] for value, count in rows]
        info.append(entry)
    return info
