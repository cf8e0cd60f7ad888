"""
Tests for the full-text tokenizer and TF-IDF scoring (engine.md 8.1-8.3).

The expected tokens of the table were produced by the reference algorithm
written in Rust (C{to_lowercase}, split on C{!is_alphanumeric}, drop tokens
of at most one byte and stop words).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.engine.textindex import (
    DEFAULT_LIMIT,
    STOP_WORDS,
    document_text,
    idf,
    lowercase,
    rank,
    score,
    term_counts,
    tf_idf,
    tokenize,
)


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("", []),
        ("Hello, World!", ["hello", "world"]),
        ("It's the user_name-field", ["user", "name", "field"]),
        ("A x 2 and 42 is it", ["42"]),
        (
            "Straße \u03a3\u0391\u03a3 \u039f\u0394\u039f\u03a3",
            ["straße", "\u03c3\u03b1\u03c2", "\u03bf\u03b4\u03bf\u03c2"],
        ),
        ("किताब पढ़ना", ["किताब", "पढ", "ना"]),
        ("مَرْحَبًا بالعالم", ["مَرْحَبًا", "بالعالم"]),
        ("שָׁלוֹם עולם", ["שָׁלוֹם", "עולם"]),
        ("Ⓐⓑ circled", ["ⓐⓑ", "circled"]),
        ("İstanbul", ["stanbul"]),
        ("日本語 テキスト", ["日本語", "テキスト"]),
        ("é e É", ["é", "é"]),
        ("O'Reilly's 3.14 v2_beta", ["reilly", "14", "v2", "beta"]),
        ("the and a to of", []),
        ("x1 y", ["x1"]),
        ("  tabs\tand\nnewlines  ", ["tabs", "newlines"]),
        ("ﬁne ﬂow", ["ﬁne", "ﬂow"]),
        ("١٢٣ numbers", ["١٢٣", "numbers"]),
        ("Ǆemal ǅ", ["ǆemal", "ǆ"]),
        ("Ω ω Å", ["ω", "ω", "å"]),
        ("rust rust RUST", ["rust", "rust", "rust"]),
        # letters newer than Python 3.11's Unicode database, lower-cased as Rust does
        ("\U00010d50\U00010d51 \ua7dc\ua7dcx", ["\U00010d70\U00010d71", "\u019b\u019bx"]),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_stop_words() -> None:
    assert len(STOP_WORDS) == 38
    assert {"a", "the", "into", "its", "you", "not", "no", "her", "his"} <= STOP_WORDS
    assert tokenize(" ".join(sorted(STOP_WORDS)).upper()) == []
    assert tokenize("then those") == ["then", "those"]


def test_lowercase_matches_rust_for_new_letters() -> None:
    assert lowercase("ABC") == "abc"
    assert lowercase("\U00016ea0") == "\U00016ebb"
    assert lowercase("\ua7cb") == "\u0264"


@pytest.mark.parametrize(
    "doc, fields, text",
    [
        ({"t": "Hello", "b": "World"}, ["t", "b"], "Hello World"),
        ({"t": "Hello", "b": "World"}, ["b", "t"], "World Hello"),
        ({"t": ["a", 1, "b", None, ["c"]]}, ["t"], "a b"),
        ({"m": {"x": "deep"}}, ["m.x"], "deep"),
        ({"t": 5, "b": None, "c": {"x": "y"}}, ["t", "b", "c", "missing"], ""),
        ({"t": "", "b": "x"}, ["t", "b"], " x"),
        ({"t": ["x"]}, ["t.0"], ""),
    ],
)
def test_document_text(doc: dict[str, Any], fields: list[str], text: str) -> None:
    assert document_text(doc, fields) == text


def test_scoring_formula() -> None:
    assert idf(10, 10) == 1.0
    assert idf(4, 1) == pytest.approx(math.log(4) + 1)
    assert tf_idf(4, 1, 2, 8) == pytest.approx(0.25 * (math.log(4) + 1))
    counts = term_counts(["rust", "db", "rust"])
    df = {"rust": 2, "db": 1}
    # duplicates in the query count twice; absent tokens add nothing
    value = score(["rust", "rust", "zzz", "db"], 5, df.__getitem__, counts, 3)
    expected = 2 * (2 / 3) * (math.log(5 / 2) + 1) + (1 / 3) * (math.log(5) + 1)
    assert value == pytest.approx(expected)


def test_rank() -> None:
    corpus = [
        ("a", "Rust is a systems programming language"),
        ("b", "Python is a programming language, Python is dynamic"),
        ("c", "the and of"),  # no tokens: not indexed, not counted in N
        ("d", "Databases written in Rust: a rust database"),
        ("e", "cooking recipes"),
    ]
    results = rank("rust programming", corpus)
    assert [key for key, _ in results] == ["a", "d", "b"]
    n = 4
    d_score = (2 / 5) * (math.log(n / 2) + 1)
    a_score = (1 / 4) * (math.log(n / 2) + 1) + (1 / 4) * (math.log(n / 2) + 1)
    assert dict(results)["d"] == pytest.approx(d_score)
    assert dict(results)["a"] == pytest.approx(a_score)
    assert rank("rust programming", corpus, limit=1) == results[:1]
    assert rank("the of", corpus) == []
    assert rank("absent", corpus) == []
    assert DEFAULT_LIMIT == 10
    assert len(rank("x1", [(i, "x1") for i in range(20)])) == 10


def test_rank_ties_keep_corpus_order() -> None:
    corpus = [(3, "same words"), (1, "same words"), (2, "same words")]
    assert [key for key, _ in rank("words", corpus)] == [3, 1, 2]


@given(st.text(max_size=40), st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_tokenize_invariants(a: str, b: str) -> None:
    tokens = tokenize(a)
    for token in tokens:
        assert len(token.encode("utf-8")) > 1
        assert token not in STOP_WORDS
        assert lowercase(token) == token
        assert tokenize(token) == [token]
    assert tokenize(" ".join(tokens)) == tokens
    assert tokenize(a + " " + b) == tokens + tokenize(b)
    assert tokenize(a.upper()) == tokenize(lowercase(a.upper()))
