"""
Text index postings in SQLite (engine.md 4.4, 8).

A collection's text index is two tables kept in step with its documents in
the same transaction as every write:

  - C{<tbl>_td(id, ntok)}: the number of tokens of each indexed document
    (documents without tokens are not indexed and do not count in C{N});
  - C{<tbl>_tt(term, id, tf)}: how often each term occurs in each document.

Tokens and the indexed text come from L{oxidb.engine.textindex}; scores are
computed by its scorer from these counts, so they are the pure scorer's.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from oxidb.engine import sqlite, textindex
from oxidb.engine.governor import NO_DEADLINE, Deadline


def _postings(doc: dict[str, Any], fields: Iterable[str]) -> tuple[int, collections.Counter[str]]:
    tokens = textindex.tokenize(textindex.document_text(doc, fields))
    return len(tokens), textindex.term_counts(tokens)


def add(conn: sqlite.Connection, tbl: str, fields: Iterable[str], docs: Iterable[tuple[int, dict[str, Any]]]) -> None:
    """Index documents (their ids must not be indexed yet)."""
    fields = list(fields)
    doc_rows: list[tuple[int, int]] = []
    term_rows: list[tuple[str, int, int]] = []
    for doc_id, doc in docs:
        ntok, counts = _postings(doc, fields)
        if not ntok:
            continue
        doc_rows.append((doc_id, ntok))
        term_rows.extend((term, doc_id, tf) for term, tf in counts.items())
    conn.executemany(f"INSERT INTO {tbl}_td(id, ntok) VALUES (?, ?)", doc_rows)
    conn.executemany(f"INSERT INTO {tbl}_tt(term, id, tf) VALUES (?, ?, ?)", term_rows)


def remove(conn: sqlite.Connection, tbl: str, ids: Iterable[int]) -> None:
    """Remove documents from the index."""
    rows = [(doc_id,) for doc_id in ids]
    conn.executemany(f"DELETE FROM {tbl}_tt WHERE id = ?", rows)
    conn.executemany(f"DELETE FROM {tbl}_td WHERE id = ?", rows)


def rebuild(conn: sqlite.Connection, tbl: str, fields: Iterable[str]) -> None:
    """Index every document of the collection afresh."""
    conn.execute(f"DELETE FROM {tbl}_tt")
    conn.execute(f"DELETE FROM {tbl}_td")
    fields = list(fields)
    cursor = conn.execute(f"SELECT _id, json(doc) FROM {tbl} ORDER BY _id")
    while True:
        batch = list(itertools.islice(cursor, 1000))
        if not batch:
            break
        add(conn, tbl, fields, ((doc_id, orjson.loads(text)) for doc_id, text in batch))


def search(
    conn: sqlite.Connection,
    tbl: str,
    query: str | Mapping[str, int],
    limit: int,
    deadline: Deadline = NO_DEADLINE,
) -> list[tuple[int, float]]:
    """
    C{(id, score)} of the best matches, best first, ties by ascending id, at
    most C{limit}; scores are L{textindex.score}'s. C{query} is the text or
    its L{textindex.query_terms}.
    """
    tokens = textindex.term_counts(textindex.tokenize(query)) if isinstance(query, str) else query
    if not tokens or limit <= 0:
        return []
    total = conn.execute(f"SELECT count(*) FROM {tbl}_td").fetchone()[0]
    df: dict[str, int] = {}
    counts: dict[int, dict[str, int]] = {}
    for term in tokens:
        deadline.check()
        postings = conn.execute(f"SELECT id, tf FROM {tbl}_tt WHERE term = ?", (term,)).fetchall()
        df[term] = len(postings)
        for doc_id, tf in postings:
            counts.setdefault(doc_id, {})[term] = tf
    if not counts:
        return []
    ids = sorted(counts)
    lengths: dict[int, int] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        lengths.update(conn.execute(f"SELECT id, ntok FROM {tbl}_td WHERE id IN ({marks})", chunk))
    scored = []
    for doc_id in ids:
        deadline.check()
        value = textindex.score(tokens, total, df.__getitem__, counts[doc_id], lengths[doc_id])
        if value > 0:
            scored.append((doc_id, value))
    scored.sort(key=lambda item: -item[1])
    return scored[:limit]


_PROBES = (
    "The quick brown fox_jumps-over the lazy dog's back",
    "ÉCOLE naïve Straße 東京 x y 42 a1 I'm",
    "it is what it is, and so on: to be or not",
)


def fingerprint() -> str:
    """A digest of the tokenizer's output on fixed texts (see L{oxidb.engine.keys.fingerprint})."""
    digest = hashlib.sha256()
    for probe in _PROBES:
        digest.update("\x00".join(textindex.tokenize(probe)).encode())
        digest.update(b"|")
    return digest.hexdigest()[:32]
