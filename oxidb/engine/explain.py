"""
C{explain} of C{find}, C{find_one}, C{count} and C{aggregate}
(docs/queries.md, "explain").

L{explain} plans the inner read with the reader's own planner
(L{Reader.plan_for}, L{Reader.scan_statement}, L{Reader.count_statement}
and, for a pipeline, L{oxidb.engine.aggregate.Pipeline.prefix}), asks
SQLite which indexes its statement uses (C{EXPLAIN QUERY PLAN}), counts
the rows the SQL condition selects (the estimate), then runs the very read
the command runs to count its result (the actual rows). Nothing here plans
a second time.

The reply (a test pins its keys) is an object:

  - C{command}, C{collection}, C{collection_exists};
  - C{index}: the first index SQLite uses (its wire name; C{"_id"} for
    the primary key) or C{null}; C{indexes}: all of them;
  - C{sql}: C{{"statement", "params", "where"}}: the statement and its
    parameters (index keys, which are bytes, as C{"X'..'"} text),
    C{where} the condition alone (C{"1"}: none); C{null} when the
    collection does not exist;
  - C{sqlite_plan}: SQLite's C{EXPLAIN QUERY PLAN} lines;
  - C{pushed}: C{filter} (C{"all"}: the whole query is SQL, C{"partial"}:
    SQL pre-filters and Python checks, C{"none"}: Python checks every
    row), C{sort} and C{skip_limit} (true when done in SQL);
  - C{residual}: the query checked in Python on every row SQL selects, or
    C{null};
  - C{stages}: for C{aggregate}, C{{"pushed": [...], "python": [...]}}
    (stage names), else C{null};
  - C{estimated_rows}: the rows the SQL condition selects (a bound on the
    result before the residual filter, skip and limit);
    C{actual_rows}: the rows the command returns (for C{count}, the count).
"""

from __future__ import annotations

import re
from typing import Any

from oxidb.engine import store
from oxidb.engine.aggregate import compile_pipeline
from oxidb.engine.matcher import find_window, parse_sort
from oxidb.engine.reads import Reader
from oxidb.errors import BadRequestError

#: The commands C{explain} takes.
EXPLAINABLE = ("find", "find_one", "count", "aggregate")

_USING_INDEX = re.compile(r"USING (?:COVERING )?INDEX (\w+)")


def _param(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return "X'" + bytes(value).hex().upper() + "'"
    return value


def _indexes_used(reader: Reader, collection: str, tbl: str, lines: list[str]) -> list[str]:
    names = {
        index.sql_name(tbl): index.name
        for index in store.list_index_defs(reader.conn, collection)
        if index.kind != store.INDEX_TEXT
    }
    used: list[str] = []
    for line in lines:
        found = _USING_INDEX.search(line)
        name = names.get(found.group(1), found.group(1)) if found else None
        if name is None and "INTEGER PRIMARY KEY" in line:
            name = "_id"
        if name is not None and name not in used:
            used.append(name)
    return used


def _empty(command: str, collection: str, stages: dict[str, list[str]] | None) -> dict[str, Any]:
    return {
        "command": command,
        "collection": collection,
        "collection_exists": False,
        "index": None,
        "indexes": [],
        "sql": None,
        "sqlite_plan": [],
        "pushed": {"filter": "none", "sort": False, "skip_limit": False},
        "residual": None,
        "stages": stages,
        "estimated_rows": 0,
        "actual_rows": 0,
    }


def explain(
    reader: Reader,
    command: str,
    collection: str,
    query: object = None,
    sort: object = None,
    skip: object = None,
    limit: object = None,
    pipeline: object = None,
) -> dict[str, Any]:
    """
    The plan and row counts of C{command} over C{collection} with these
    arguments (those of the command; C{pipeline} for C{aggregate}), as in
    the module docstring. Bad arguments raise what the command raises.
    """
    if command not in EXPLAINABLE:
        raise BadRequestError(f"explain supports find/count/aggregate, got: {command}")
    stages: dict[str, list[str]] | None = None
    index_arrays = True
    residual_query: object = query
    if command == "aggregate":
        compiled = compile_pipeline(pipeline, reader.limits)
        prefix = compiled.prefix
        matcher = prefix.matcher if prefix.matcher is not None else reader.check_query(None)
        residual_query = prefix.query
        spec, window = prefix.sort, (prefix.skip or None, prefix.limit)
        index_arrays = False
        stages = {"pushed": list(compiled.names[: prefix.stages]), "python": list(compiled.names[prefix.stages :])}
    else:
        matcher = reader.check_query(query)
        if command == "find":
            spec, window = parse_sort(sort, reader.limits), find_window(skip, limit)
        else:
            spec, window = None, (None, 1 if command == "find_one" else None)
    info = reader.collection(collection)
    if info is None:
        return _empty(command, collection, stages)
    plan = reader.plan_for(info, matcher)
    if command == "count":
        if plan.exact:
            sql, params = reader.count_statement(info, plan)
        else:
            scan = reader.scan_statement(info, plan)
            sql, params = scan.sql, scan.params
        sorted_in_sql = window_in_sql = False
    else:
        statement = reader.scan_statement(info, plan, spec, *window, index_arrays)
        sql, params = statement.sql, statement.params
        sorted_in_sql = bool(spec)
        window_in_sql = statement.window_in_sql and (window[0] is not None or window[1] is not None)
    lines = [str(row[-1]) for row in reader.conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    indexes = _indexes_used(reader, info.name, info.tbl, lines)
    estimated = int(reader.conn.execute(*reader.count_statement(info, plan)).fetchone()[0])
    if command == "find":
        actual = len(reader.find(collection, query, sort, skip, limit, capped=False))
    elif command == "find_one":
        actual = 0 if reader.find_one(collection, query) is None else 1
    elif command == "count":
        actual = reader.count(collection, query)
    else:
        actual = len(reader.aggregate(collection, pipeline))
    if plan.exact:
        pushed_filter = "all"
    else:
        pushed_filter = "none" if plan.where == "1" else "partial"
    return {
        "command": command,
        "collection": collection,
        "collection_exists": True,
        "index": indexes[0] if indexes else None,
        "indexes": indexes,
        "sql": {"statement": sql, "params": [_param(p) for p in params], "where": plan.where},
        "sqlite_plan": lines,
        "pushed": {"filter": pushed_filter, "sort": sorted_in_sql, "skip_limit": window_in_sql},
        "residual": None if plan.exact else ({} if residual_query is None else residual_query),
        "stages": stages,
        "estimated_rows": estimated,
        "actual_rows": actual,
    }
