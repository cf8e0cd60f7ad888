"""
Aggregation with its leading stages pushed down to SQL, and text search over
the posting tables, against the pure reference implementations.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oxidb.engine import textindex
from oxidb.engine.aggregate import compile_pipeline
from oxidb.engine.engine import Engine
from oxidb.engine.matcher import apply_find
from oxidb.errors import InvalidPipelineError, InvalidQueryError

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([1.0, 2.5, "2024-01-15", "2024-01-15T00:00:00Z", "a", "b", "B"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.sampled_from("ab"), inner, max_size=2)),
    max_leaves=4,
)
documents = st.dictionaries(st.sampled_from(["a", "b", "k", "n"]), values, max_size=4)
fields = st.sampled_from(["a", "b", "k", "n", "a.b", "b.a", "a.0"])


@st.composite
def matches(draw: Any) -> dict[str, Any]:
    op = draw(st.sampled_from(["$eq", "$gt", "$lte", "$ne", "$in", "$exists", "$regex"]))
    if op == "$in":
        operand: Any = draw(st.lists(values, max_size=3))
    elif op == "$exists":
        operand = draw(st.booleans())
    elif op == "$regex":
        operand = draw(st.sampled_from(["a", "^b"]))
    else:
        operand = draw(values)
    return {"$match": {draw(fields): {op: operand}}}


prefix_stages = st.one_of(
    matches(),
    st.builds(lambda f, d: {"$sort": {f: d}}, fields, st.sampled_from([1, -1])),
    st.builds(lambda n: {"$skip": n}, st.integers(0, 4)),
    st.builds(lambda n: {"$limit": n}, st.integers(0, 6)),
)
later_stages = st.one_of(
    prefix_stages,
    st.builds(
        lambda key: {
            "$group": {
                "_id": key,
                "n": {"$sum": 1},
                "total": {"$sum": "$n"},
                "avg": {"$avg": "$n"},
                "lo": {"$min": "$a"},
                "all": {"$push": "$k"},
            }
        },
        st.sampled_from([None, "$k", "$a", {"x": "$k", "y": "$b"}]),
    ),
    st.builds(lambda f: {"$project": {f: 1, "twice": {"$multiply": ["$n", 2]}}}, fields),
    st.builds(lambda f: {"$unwind": "$" + f}, st.sampled_from(["a", "b"])),
    st.just({"$count": "total"}),
    st.just({"$lookup": {"from": "other", "localField": "k", "foreignField": "k", "as": "joined"}}),
    st.just({"$addFields": {"sum": {"$add": ["$n", 1]}}}),
)
pipelines = st.builds(lambda a, b: a + b, st.lists(prefix_stages, max_size=4), st.lists(later_stages, max_size=3))

_names = itertools.count()

PROPERTY = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with Engine(str(tmp_path_factory.mktemp("agg")), synchronous="OFF") as engine:
        yield engine


def _outcome(fn: Any) -> Any:
    try:
        return fn()
    except (InvalidQueryError, InvalidPipelineError) as e:
        return ("error", str(e))


@PROPERTY
@given(
    docs=st.lists(documents, max_size=10),
    others=st.lists(documents, max_size=4),
    indexed=st.booleans(),
    pipeline=pipelines,
)
def test_aggregate_matches_reference(
    engine: Engine, docs: list[dict[str, Any]], others: list[dict[str, Any]], indexed: bool, pipeline: list[Any]
) -> None:
    name = f"a{next(_names)}"
    if indexed:
        for field in ("a", "k", "a.b"):
            engine.apply({"CreateIndex": {"collection": name, "field": field}}, 0.0)
    engine.apply({"InsertMany": {"collection": name, "documents": docs}}, 0.0)
    engine.apply({"DropCollection": {"name": "other"}}, 0.0)
    engine.apply({"InsertMany": {"collection": "other", "documents": others}}, 0.0)
    stored, stored_others = engine.find(name), engine.find("other")

    def reference() -> Any:
        compiled = compile_pipeline(pipeline)
        return compiled.run(stored, lambda coll, query: apply_find(stored_others if coll == "other" else [], query))

    assert _outcome(lambda: engine.aggregate(name, pipeline)) == _outcome(reference)


def test_leading_match_runs_in_sql(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.apply({"InsertMany": {"collection": "pushed", "documents": [{"n": i} for i in range(100)]}}, 0.0)
    statements: list[str] = []
    conn = engine._reader_conn()
    conn.set_trace_callback(statements.append)
    try:
        result = engine.aggregate(
            "pushed",
            [
                {"$match": {"n": {"$gte": 10}}},
                {"$sort": {"n": -1}},
                {"$skip": 2},
                {"$limit": 3},
                {"$project": {"n": 1, "_id": 0}},
            ],
        )
    finally:
        conn.set_trace_callback(None)
    assert result == [{"n": 97}, {"n": 96}, {"n": 95}]
    select = [s for s in statements if s.startswith("SELECT _id, _version, doc")]
    assert len(select) == 1 and "WHERE" in select[0] and "LIMIT" in select[0] and "DESC" in select[0]


# --- text search ---------------------------------------------------------------------

WORDS = ["apple", "banana", "cherry", "the", "a", "Apple", "date-fig", "x", "über", "an_egg"]
texts = st.lists(st.sampled_from(WORDS), max_size=6).map(" ".join)
text_docs = st.fixed_dictionaries(
    {},
    optional={
        "title": texts,
        "body": st.one_of(texts, st.lists(st.one_of(texts, st.integers()), max_size=3), st.integers()),
    },
)


def _reference_search(docs: list[dict[str, Any]], fields: list[str], query: str, limit: int) -> list[tuple[int, float]]:
    corpus = [(doc["_id"], textindex.document_text(doc, fields)) for doc in docs]
    return textindex.rank(query, corpus, limit)


@PROPERTY
@given(
    docs=st.lists(text_docs, max_size=12),
    query=texts,
    limit=st.integers(0, 12),
    delete=st.sets(st.integers(1, 12), max_size=3),
    changed=st.dictionaries(st.integers(1, 12), texts, max_size=3),
    early=st.booleans(),
)
def test_text_search_matches_reference(
    engine: Engine,
    docs: list[dict[str, Any]],
    query: str,
    limit: int,
    delete: set[int],
    changed: dict[int, str],
    early: bool,
) -> None:
    name = f"t{next(_names)}"
    fields = ["title", "body"]
    if early:  # the index is maintained by writes, or backfilled at creation
        engine.apply({"CreateTextIndex": {"collection": name, "fields": fields}}, 0.0)
    engine.apply({"InsertMany": {"collection": name, "documents": docs}}, 0.0)
    engine.apply({"Delete": {"collection": name, "query": {"_id": {"$in": sorted(delete)}}}}, 0.0)
    for doc_id, title in changed.items():
        engine.apply(
            {"Update": {"collection": name, "query": {"_id": doc_id}, "update": {"$set": {"title": title}}}}, 0.0
        )
    if not early:
        engine.apply({"CreateTextIndex": {"collection": name, "fields": fields}}, 0.0)
    stored = engine.find(name)
    expected = _reference_search(stored, fields, query, limit)
    found = engine.text_search(name, query, limit)
    assert [(doc["_id"], doc["_score"]) for doc in found] == expected
    by_id = {doc["_id"]: doc for doc in stored}
    assert [{k: v for k, v in doc.items() if k != "_score"} for doc in found] == [by_id[i] for i, _ in expected]


def test_text_search_errors_and_shapes(engine: Engine) -> None:
    with pytest.raises(
        InvalidQueryError, match="^invalid query: no text index on this collection; create one with create_text_index$"
    ):
        engine.text_search("no_text_index", "apple", 10)
    engine.apply({"CreateTextIndex": {"collection": "shapes", "fields": ["t"]}}, 0.0)
    engine.apply(
        {"InsertMany": {"collection": "shapes", "documents": [{"t": "apple pie", "_score": "stored"}, {"t": "the"}]}},
        0.0,
    )
    assert engine.text_search("shapes", "the a", 10) == []
    (hit,) = engine.text_search("shapes", "apple", 10)
    assert isinstance(hit["_score"], float) and hit["t"] == "apple pie"
    # The create call keeps the first field list.
    engine.apply({"CreateTextIndex": {"collection": "shapes", "fields": ["other"]}}, 0.0)
    assert engine.list_indexes("shapes")[0]["fields"] == ["t"]
