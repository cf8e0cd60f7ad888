"""
Each row's stored JSON text length (C{store.DOC_SIZE}): written with the
document, what the aggregation budget counts instead of measuring
C{json(doc)}, and measured only in rows written without it (files of the
older layout, which keep opening).
"""

from __future__ import annotations

import gzip
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oxidb.engine import reads, store
from oxidb.engine.engine import Engine
from oxidb.engine.governor import DEFAULT_LIMITS, DOC_OVERHEAD, QueryLimits
from oxidb.engine.operations import Operation
from oxidb.engine.ttl import CreateTtlIndex
from oxidb.engine.writes import WriteTxn
from tests.test_engine_group_pushdown import _outcome, _pushed, groups, json_values

OLD_FILE = Path(__file__).parent / "fixtures" / "store_v3" / "oxidb.sqlite3.gz"


@attrs.frozen
class _SetSizes(Operation):
    """Overwrite the stored sizes of some rows (None: as rows of older code have them)."""

    KIND: ClassVar[str] = "TestSetSizes"
    collection: str
    ids: list[int]
    size: int | None


def _set_sizes(txn: WriteTxn, op: _SetSizes, now: float) -> None:
    info = store.get_collection(txn.conn, op.collection)
    assert info is not None
    txn.conn.executemany(f"UPDATE {info.tbl} SET {store.DOC_SIZE} = ? WHERE _id = ?", [(op.size, i) for i in op.ids])


def _open(data_dir: str) -> Engine:
    engine = Engine(data_dir, synchronous="OFF")
    engine.register_operation(_SetSizes, _set_sizes)
    engine.register_operation(CreateTtlIndex)
    engine.open()
    return engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = _open(str(tmp_path_factory.mktemp("sizes")))
    yield engine
    engine.close()


def _sizes(engine: Engine, collection: str) -> list[tuple[int, int | None, int]]:
    """C{(_id, stored size, measured text length)} of every row."""

    def read(reader: reads.Reader) -> list[tuple[int, int | None, int]]:
        info = store.get_collection(reader.conn, collection)
        assert info is not None
        sql = f"SELECT _id, {store.DOC_SIZE}, octet_length(json(doc)) FROM {info.tbl} ORDER BY _id"
        return [(row[0], row[1], row[2]) for row in reader.conn.execute(sql)]

    return engine.read(read)


_names = itertools.count()

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@settings(PROPERTY, max_examples=25)
@given(
    docs=st.lists(st.dictionaries(st.text(max_size=4), json_values, max_size=5), min_size=1, max_size=6),
    change=json_values,
)
def test_stored_sizes_are_the_text_lengths(engine: Engine, docs: list[dict[str, Any]], change: Any) -> None:
    """Insert, update and compact store the UTF-8 length of the text C{json(doc)} gives back."""
    name = f"s{next(_names)}"
    engine.apply({"CreateIndex": {"collection": name, "field": "a"}}, 0.0)
    engine.apply({"InsertMany": {"collection": name, "documents": docs}}, 0.0)
    engine.apply(
        {"Update": {"collection": name, "query": {"_id": {"$gte": 2}}, "update": {"$set": {"u": change}}}}, 0.0
    )
    engine.apply({"Compact": {"collection": name}}, 0.0)
    rows = _sizes(engine, name)
    assert len(rows) == len(docs)
    assert all(stored == measured for _, stored, measured in rows)


#: Documents whose C{$group} by C{k} summing C{x} the pushdown answers, of
#: varied text sizes (C{p}: escapes and multi-byte characters).
sized_documents = st.fixed_dictionaries(
    {"k": st.one_of(st.none(), st.integers(0, 2), st.sampled_from(["a", "b"]))},
    optional={"x": st.integers(-(2**40), 2**40), "p": st.text(max_size=30)},
)
pushed_groups = st.one_of(
    st.just({"_id": "$k", "n": {"$count": {}}}),
    st.just({"_id": "$k", "s": {"$sum": "$x"}, "a": {"$avg": "$x"}}),
    st.just({"_id": None, "m": {"$max": "$x"}}),
)


@PROPERTY
@given(
    docs=st.lists(sized_documents, min_size=1, max_size=12),
    group=st.one_of(pushed_groups, pushed_groups, groups()),
    match=st.one_of(st.none(), st.builds(lambda v: {"$match": {"x": {"$gte": v}}}, st.integers(-5, 5))),
    forget=st.sets(st.integers(1, 12)),
    spare=st.sampled_from([-1, 0, 1, -40, 40, 400]),
)
def test_budget_with_stored_and_missing_sizes_equals_python_path(
    engine: Engine,
    docs: list[dict[str, Any]],
    group: dict[str, Any],
    match: Any,
    forget: set[int],
    spare: int,
) -> None:
    """
    The C{$group} pushdown, under a byte budget around the input's exact
    size, decides as the Python path does, whether the rows' sizes are
    stored or (C{forget}) left to be measured.
    """
    name = f"b{next(_names)}"
    engine.apply({"InsertMany": {"collection": name, "documents": docs}}, 0.0)
    engine.apply(_SetSizes(name, sorted(forget), None), 0.0)
    texts = sum(measured for _, _, measured in _sizes(engine, name))
    pipeline = [stage for stage in (match, {"$group": group}) if stage is not None]
    limits = attrs.evolve(DEFAULT_LIMITS, agg_max_bytes=texts + len(docs) * DOC_OVERHEAD + spare)
    saved = engine.limits
    engine.limits = limits
    try:
        pushed = _outcome(lambda: engine.aggregate(name, pipeline))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(reads.Reader, "_group_in_sql", lambda *args: None)
            python = _outcome(lambda: engine.aggregate(name, pipeline))
    finally:
        engine.limits = saved
    assert pushed == python, pipeline


def _budget_for(engine: Engine, collection: str) -> QueryLimits:
    texts = sum(measured for _, _, measured in _sizes(engine, collection))
    count = len(_sizes(engine, collection))
    return attrs.evolve(DEFAULT_LIMITS, agg_max_bytes=texts + count * DOC_OVERHEAD)


@pytest.mark.parametrize("match", [[], [{"$match": {"k": {"$gte": 0}}}]], ids=["all", "matched"])
def test_the_budget_counts_the_stored_sizes(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, match: list[dict[str, Any]]
) -> None:
    """
    The sizes are read, not measured again: with a wrong stored size the
    statement finds the input too large and leaves it to the Python path
    (which reads the texts, so the answer stays right). So too after a
    C{$match}, whose rows are measured by a statement of their own.
    """
    name = f"wrong{next(_names)}"
    docs = [{"k": i % 3, "pad": "x" * 50} for i in range(30)]
    engine.apply({"InsertMany": {"collection": name, "documents": docs}}, 0.0)
    grouped = [*match, {"$group": {"_id": "$k", "n": {"$count": {}}}}]
    answer = [{"_id": k, "n": 10} for k in range(3)]
    pushed = _pushed(monkeypatch)
    saved = engine.limits
    engine.limits = _budget_for(engine, name)
    try:
        assert engine.aggregate(name, grouped) == answer
        engine.apply(_SetSizes(name, [7], 10**6), 0.0)
        assert engine.aggregate(name, grouped) == answer
        # A row without a size is measured: exactly its text again.
        engine.apply(_SetSizes(name, [7], None), 0.0)
        assert engine.aggregate(name, grouped) == answer
    finally:
        engine.limits = saved
    assert pushed == [True, False, True]


def test_a_file_of_the_older_layout_keeps_opening(tmp_path: Path) -> None:
    """
    A file written before the column existed (C{tests/fixtures/store_v3})
    gets the column on open, its old rows without sizes: their texts are
    measured, new rows store theirs, and opening again changes nothing.
    """
    data = tmp_path / "old"
    os.makedirs(data)
    with gzip.open(OLD_FILE, "rb") as f, open(data / store.DB_FILENAME, "wb") as out:
        out.write(f.read())
    engine = _open(str(data))
    try:
        old = _sizes(engine, "people")
        assert [(doc_id, stored) for doc_id, stored, _ in old] == [(1, None), (2, None), (3, None)]
        engine.apply({"Insert": {"collection": "people", "document": {"name": "dee", "age": 36}}}, 0.0)
        assert _sizes(engine, "people")[-1][1] == _sizes(engine, "people")[-1][2]
        grouped = [{"$group": {"_id": "$age", "n": {"$count": {}}}}]
        expected = [{"_id": 36, "n": 2}, {"_id": 25, "n": 1}, {"_id": 51, "n": 1}]
        engine.limits = _budget_for(engine, "people")
        assert engine.aggregate("people", grouped) == expected
        engine.limits = attrs.evolve(engine.limits, agg_max_bytes=engine.limits.agg_max_bytes - 1)
        assert _outcome(lambda: engine.aggregate("people", grouped))[0] == "AggregationLimitError"
        before = _sizes(engine, "people")
    finally:
        engine.close()
    engine = _open(str(data))
    try:
        assert _sizes(engine, "people") == before
    finally:
        engine.close()
