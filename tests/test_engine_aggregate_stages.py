"""
Tests for the aggregation stages added by issue 14 (reads): C{$set},
C{$unset}, C{$replaceRoot}/C{$replaceWith}, C{$sortByCount}, C{$bucket},
C{$facet}, their budget, and C{aggregate_docs} in the engine. Expected
outputs are MongoDB's for the same pipeline, except where docs/aggregation.md
says otherwise.
"""

from __future__ import annotations

from typing import Any

import pytest

from oxidb.engine.aggregate import compile_pipeline
from oxidb.engine.governor import DEFAULT_LIMITS, Budget, approx_size
from oxidb.engine.values import deep_copy, json_equal
from oxidb.errors import AggregationLimitError, InvalidPipelineError, TooLargeError

Doc = dict[str, Any]


def run(pipeline: list[Any], docs: list[Doc]) -> list[Doc]:
    before = deep_copy(docs)
    result = compile_pipeline(pipeline).run(docs, lambda collection, query: [])
    assert json_equal(docs, before), "a stage mutated its input"
    return result


def same(actual: list[Doc], expected: list[Doc]) -> bool:
    return len(actual) == len(expected) and all(json_equal(a, e) for a, e in zip(actual, expected, strict=True))


ITEMS: list[Doc] = [
    {"_id": 1, "name": "pen", "price": 1, "tags": ["office", "cheap"], "dim": {"w": 1, "h": 14}},
    {"_id": 2, "name": "ink", "price": 5.5, "tags": ["office"], "dim": {"w": 3, "h": 3}},
    {"_id": 3, "name": "desk", "price": 150, "tags": ["office", "big"], "dim": {"w": 120, "h": 75}},
    {"_id": 4, "name": "lamp", "price": 20, "tags": ["home"]},
    {"_id": 5, "name": "rug", "price": None, "tags": ["home", "big"]},
    {"_id": 6, "name": "gift"},
]


def test_set_is_add_fields() -> None:
    pipeline = [{"$set": {"total": {"$multiply": ["$price", 2]}, "dim.area": {"$multiply": ["$dim.w", "$dim.h"]}}}]
    result = run(pipeline, ITEMS[:2])
    assert result[0]["total"] == 2 and result[0]["dim"] == {"w": 1, "h": 14, "area": 14}
    assert result[1]["total"] == 11 and result[1]["dim"]["area"] == 9
    assert run(pipeline, ITEMS[:2]) == run([{"$addFields": pipeline[0]["$set"]}], ITEMS[:2])


def test_unset() -> None:
    result = run([{"$unset": ["tags", "dim.h", "nope", "name.x"]}], ITEMS[:1] + ITEMS[5:])
    assert same(result, [{"_id": 1, "name": "pen", "price": 1, "dim": {"w": 1}}, {"_id": 6, "name": "gift"}])
    assert same(run([{"$unset": "name"}], ITEMS[5:]), [{"_id": 6}])


def test_replace_root_and_replace_with() -> None:
    result = run([{"$match": {"dim": {"$exists": True}}}, {"$replaceRoot": {"newRoot": "$dim"}}], ITEMS)
    assert same(result, [{"w": 1, "h": 14}, {"w": 3, "h": 3}, {"w": 120, "h": 75}])
    # Expression objects are evaluated here (MongoDB), a missing value drops its key.
    result = run(
        [{"$replaceWith": {"n": "$name", "p": {"v": "$price"}, "gone": "$nope", "t": [{"$size": "$tags"}]}}], ITEMS[:1]
    )
    assert same(result, [{"n": "pen", "p": {"v": 1}, "t": [2]}])
    result = run(
        [{"$replaceWith": {"$cond": [{"$gt": ["$price", 10]}, {"$literal": {"big": True}}, "$dim"]}}], ITEMS[2:4]
    )
    assert same(result, [{"big": True}, {"big": True}])


@pytest.mark.parametrize(
    "stage, doc, shown",
    [
        ({"$replaceRoot": {"newRoot": "$dim"}}, {"_id": 9}, "MISSING. Type of resulting value: 'missing'"),
        ({"$replaceWith": "$name"}, {"name": "x"}, "\"x\". Type of resulting value: 'string'"),
        ({"$replaceWith": "$a"}, {"a": None}, "null. Type of resulting value: 'null'"),
    ],
)
def test_replace_root_needs_an_object(stage: Doc, doc: Doc, shown: str) -> None:
    with pytest.raises(InvalidPipelineError) as raised:
        run([stage], [doc])
    assert str(raised.value) == (
        "invalid pipeline: 'newRoot' expression must evaluate to an object, but resulting value was: " + shown
    )


def test_sort_by_count() -> None:
    result = run([{"$unwind": "$tags"}, {"$sortByCount": "$tags"}], ITEMS)
    # Ties keep the order of first appearance.
    assert same(
        result,
        [
            {"_id": "office", "count": 3},
            {"_id": "big", "count": 2},
            {"_id": "home", "count": 2},
            {"_id": "cheap", "count": 1},
        ],
    )
    result = run([{"$sortByCount": {"$gt": ["$price", 10]}}], ITEMS)
    assert same(result, [{"_id": False, "count": 4}, {"_id": True, "count": 2}])


def test_bucket_with_default_and_output() -> None:
    docs = [{"_id": i, "p": p} for i, p in enumerate([1, 5, 10, 15.5, 20, 25, None, "x"])] + [{"_id": 99}]
    result = run([{"$bucket": {"groupBy": "$p", "boundaries": [0, 10, 20], "default": "Other"}}], docs)
    assert same(result, [{"_id": 0, "count": 2}, {"_id": 10, "count": 2}, {"_id": "Other", "count": 5}])
    result = run(
        [
            {
                "$bucket": {
                    "groupBy": {"$multiply": ["$p", 2]},
                    "boundaries": [0, 20, 100],
                    "output": {"ids": {"$push": "$_id"}, "avg": {"$avg": "$p"}},
                }
            }
        ],
        docs[:6],
    )
    # Buckets come in boundary order; a bucket without documents is left out.
    assert same(result, [{"_id": 0, "ids": [0, 1], "avg": 3}, {"_id": 20, "ids": [2, 3, 4, 5], "avg": 17.625}])
    assert run([{"$bucket": {"groupBy": "$p", "boundaries": [0, 1]}}], []) == []


def test_bucket_without_default_needs_a_branch() -> None:
    with pytest.raises(InvalidPipelineError) as raised:
        run([{"$bucket": {"groupBy": "$p", "boundaries": [0, 10]}}], [{"p": 10}])
    assert str(raised.value) == (
        "invalid pipeline: $bucket could not find a matching branch for an input, and no default was specified"
    )


def test_bucket_string_boundaries() -> None:
    docs = [{"n": n} for n in ("apple", "kiwi", "zebra", "Banana")]
    result = run([{"$bucket": {"groupBy": "$n", "boundaries": ["a", "m", "z"], "default": "zz"}}], docs)
    assert same(result, [{"_id": "a", "count": 2}, {"_id": "zz", "count": 2}])


def test_facet() -> None:
    pipeline = [
        {"$match": {"price": {"$ne": None}}},
        {
            "$facet": {
                "cheap": [{"$match": {"price": {"$lt": 10}}}, {"$project": {"name": 1, "_id": 0}}],
                "byTag": [{"$unwind": "$tags"}, {"$sortByCount": "$tags"}, {"$limit": 2}],
                "stats": [{"$group": {"_id": None, "n": {"$sum": 1}, "max": {"$max": "$price"}}}],
                "none": [{"$match": {"price": {"$gt": 1000}}}],
            }
        },
    ]
    result = run(pipeline, ITEMS)
    assert same(
        result,
        [
            {
                "cheap": [{"name": "pen"}, {"name": "ink"}],
                "byTag": [{"_id": "office", "count": 3}, {"_id": "cheap", "count": 1}],
                "stats": [{"_id": None, "n": 4, "max": 150}],
                "none": [],
            }
        ],
    )
    # A stage after $facet sees its one document.
    result = run(pipeline + [{"$project": {"n": {"$size": "$cheap"}}}], ITEMS)
    assert same(result, [{"n": 2}])


HUGE = list(range(DEFAULT_LIMITS.query_max_array + 1))


@pytest.mark.parametrize(
    "pipeline, message",
    [
        ([{"$bogus": {}}], "unknown stage: $bogus"),
        ([{"$set": []}], "$set must be an object"),
        ([{"$set": {"a": {"$nope": 1}}}], "unknown expression operator: $nope"),
        ([{"$unset": 5}], "$unset specification must be a string or an array of strings"),
        ([{"$unset": ["a", 1]}], "$unset specification must be a string or an array of strings"),
        ([{"$unset": []}], "$unset specification must be a string or an array with at least one field"),
        ([{"$unset": "$a"}], "$unset: invalid field path '$a'"),
        ([{"$unset": "a..b"}], "$unset: invalid field path 'a..b'"),
        ([{"$replaceRoot": "$a"}], "$replaceRoot requires exactly one field, 'newRoot'"),
        ([{"$replaceRoot": {"newRoot": "$a", "x": 1}}], "$replaceRoot requires exactly one field, 'newRoot'"),
        ([{"$replaceWith": {"a": 1, "$b": 2}}], "an expression object's field names may not start with '$': $b"),
        ([{"$sortByCount": "tags"}], "$sortByCount must be a $-prefixed path or an expression object"),
        ([{"$sortByCount": {"a": "$b"}}], "$sortByCount must be a $-prefixed path or an expression object"),
        ([{"$bucket": []}], "$bucket must be an object"),
        ([{"$bucket": {"groupBy": "$a"}}], "$bucket requires 'groupBy' and 'boundaries' to be specified"),
        ([{"$bucket": {"groupBy": "$a", "boundaries": [1, 2], "x": 1}}], "unrecognized option to $bucket: x"),
        (
            [{"$bucket": {"groupBy": "a", "boundaries": [1, 2]}}],
            "$bucket's 'groupBy' must be a $-prefixed path or an expression object",
        ),
        (
            [{"$bucket": {"groupBy": "$a", "boundaries": [1]}}],
            "$bucket's 'boundaries' must be an array of at least 2 values",
        ),
        (
            [{"$bucket": {"groupBy": "$a", "boundaries": "1,2"}}],
            "$bucket's 'boundaries' must be an array of at least 2 values",
        ),
        ([{"$bucket": {"groupBy": "$a", "boundaries": HUGE}}], "$bucket has more than 10000 boundaries"),
        ([{"$bucket": {"groupBy": "$a", "boundaries": [1, "b"]}}], "$bucket's 'boundaries' must all be of one type"),
        (
            [{"$bucket": {"groupBy": "$a", "boundaries": [1, None]}}],
            "$bucket's 'boundaries' must be numbers, strings or dates",
        ),
        (
            [{"$bucket": {"groupBy": "$a", "boundaries": [[1], [2]]}}],
            "$bucket's 'boundaries' must be numbers, strings or dates",
        ),
        (
            [{"$bucket": {"groupBy": "$a", "boundaries": ["$x", "$y"]}}],
            "$bucket's 'boundaries' must be constant values",
        ),
        (
            [{"$bucket": {"groupBy": "$a", "boundaries": [1, 3, 3]}}],
            "$bucket's 'boundaries' must be sorted in ascending order without duplicates (elements 1 and 2 are not)",
        ),
        (
            [{"$bucket": {"groupBy": "$a", "boundaries": [0, 10], "default": 5}}],
            "$bucket's 'default' must be less than the lowest boundary or at least the highest",
        ),
        ([{"$bucket": {"groupBy": "$a", "boundaries": [0, 1], "output": []}}], "$bucket's 'output' must be an object"),
        ([{"$bucket": {"groupBy": "$a", "boundaries": [0, 1], "output": {"n": 1}}}], "accumulator must be an object"),
        ([{"$facet": {}}], "$facet must be a non-empty object"),
        ([{"$facet": []}], "$facet must be a non-empty object"),
        ([{"$facet": {"a": {}}}], "$facet 'a' must be an array of stages"),
        ([{"$facet": {"a": []}}], "$facet 'a' must not be empty"),
        (
            [{"$facet": {"a.b": [{"$count": "n"}]}}],
            "$facet output names must be non-empty, without '.' or a leading '$': 'a.b'",
        ),
        ([{"$facet": {"a": [{"$facet": {"b": [{"$count": "n"}]}}]}}], "$facet is not allowed inside $facet"),
        ([{"$facet": {"a": [{"$nope": 1}]}}], "unknown stage: $nope"),
        ([{"$facet": {"a": [{"$limit": 1}] * 600, "b": [{"$limit": 1}] * 401}}], "$facet has more than 1000 stages"),
    ],
)
def test_bad_stages(pipeline: list[Any], message: str) -> None:
    with pytest.raises(InvalidPipelineError) as raised:
        compile_pipeline(pipeline)
    assert str(raised.value) == "invalid pipeline: " + message


def test_deep_expression_in_a_stage() -> None:
    deep: Any = "$a"
    for _ in range(200):
        deep = {"$abs": deep}
    with pytest.raises(TooLargeError):
        compile_pipeline([{"$set": {"x": deep}}])


# --- budget -----------------------------------------------------------------------------------


def run_budget(pipeline: list[Any], docs: list[Doc], budget: Budget) -> list[Doc]:
    sizes = [approx_size(doc) for doc in docs]
    out, _ = compile_pipeline(pipeline).run_sized(docs, sizes, lambda c, q: ([], 0), budget)
    return out


BIG = [{"_id": i, "s": "x" * 1000} for i in range(20)]  # about 22 KB counted


def test_facet_counts_what_earlier_facets_hold() -> None:
    # Each facet alone fits in 30 KB; the second one's output on top of the first's does not.
    one = [{"$facet": {"a": [{"$match": {}}]}}]
    assert len(run_budget(one, BIG, Budget(30_000, 1000))[0]["a"]) == 20
    two = [{"$facet": {"a": [{"$match": {}}], "b": [{"$project": {"s": 1}}]}}]
    with pytest.raises(AggregationLimitError) as raised:
        run_budget(two, BIG, Budget(30_000, 1000))
    assert str(raised.value).startswith("aggregation stage $facet.b.$project exceeded the memory limit of 30000 bytes")


def test_facet_document_limit_counts_all_facets() -> None:
    docs = [{"_id": i} for i in range(6)]
    spec = {"a": [{"$match": {}}], "b": [{"$match": {}}]}
    assert len(run_budget([{"$facet": spec}], docs, Budget(2**40, 12))[0]["b"]) == 6
    with pytest.raises(AggregationLimitError, match=r"stage \$facet.b exceeded the document limit of 11 "):
        run_budget([{"$facet": spec}], docs, Budget(2**40, 11))


@pytest.mark.parametrize(
    "pipeline, stage, limit",
    [
        ([{"$set": {"t": "$s"}}], "$set", 30_000),
        ([{"$replaceWith": {"a": "$s", "b": "$s"}}], "$replaceWith", 30_000),
        (
            [{"$bucket": {"groupBy": "$_id", "boundaries": [0, 100], "output": {"p": {"$push": "$s"}}}}],
            "$bucket",
            15_000,
        ),
        ([{"$sortByCount": "$s"}], "$sortByCount", 15_000),
    ],
)
def test_new_stages_within_the_budget(pipeline: list[Any], stage: str, limit: int) -> None:
    docs = [{"_id": i, "s": "x" * 1000 + str(i)} for i in range(20)]
    assert run_budget(pipeline, docs, Budget(10**6, 1000))
    with pytest.raises(AggregationLimitError) as raised:
        run_budget(pipeline, docs, Budget(limit, 1000))
    assert str(raised.value).startswith(f"aggregation stage {stage} exceeded the memory limit")
