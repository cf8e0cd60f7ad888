"""
Text extraction from blob contents by content type (engine.md 8.4).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.engine.blobtext import extract_text, is_extractable, parse_content_type, strip_markup


@pytest.mark.parametrize(
    "content_type, expected",
    [
        ("text/plain", ("text/plain", None)),
        ("Text/HTML; Charset=UTF-8", ("text/html", "UTF-8")),
        ('text/plain; format=flowed; charset="latin-1"', ("text/plain", "latin-1")),
        ("  application/json  ", ("application/json", None)),
        ("", ("", None)),
    ],
)
def test_parse_content_type(content_type: str, expected: tuple[str, str | None]) -> None:
    assert parse_content_type(content_type) == expected


def test_plain_text_is_the_utf8_bytes() -> None:
    assert extract_text("text/plain", "naïve café\n".encode()) == "naïve café\n"
    assert extract_text("text/markdown", b"# Title") == "# Title"
    assert extract_text("TEXT/CSV", b"a,b") == "a,b"


def test_invalid_utf8_text_has_no_text() -> None:
    assert extract_text("text/plain", b"ok \xff\xfe") is None


def test_charset_parameter_is_honoured() -> None:
    assert extract_text("text/plain; charset=latin-1", b"caf\xe9") == "café"
    assert extract_text("text/plain; charset=utf-16", "hi".encode("utf-16")) == "hi"


@pytest.mark.parametrize("charset", ["no-such-charset", "base64", "rot13", "zlib"])
def test_unknown_or_non_text_charsets_fall_back_to_utf8(charset: str) -> None:
    assert extract_text(f"text/plain; charset={charset}", b"plain") == "plain"


def test_html_tags_stripped_entities_decoded_scripts_dropped() -> None:
    html = (
        b"<!DOCTYPE html><html><head><title>The Title</title><style>p { color: red }</style>"
        b"<script>var secret = 1;</script></head><body><p>Caf&eacute;&nbsp;<b>bold</b>"
        b"<!-- hidden comment --> tail&#33;</p></body></html>"
    )
    text = extract_text("text/html; charset=utf-8", html)
    assert text is not None
    assert text.split() == ["The", "Title", "Café", "bold", "tail!"]
    assert extract_text("application/xhtml+xml", b"<p>x<br/>y</p>").split() == ["x", "y"]  # type: ignore[union-attr]


def test_html_with_bad_bytes_is_still_extracted() -> None:
    assert extract_text("text/html", b"<p>ok\xff</p>") == " ok\ufffd "


def test_html_tags_separate_words() -> None:
    assert extract_text("text/html", b"one<br>two</p>three").split() == ["one", "two", "three"]  # type: ignore[union-attr]


@pytest.mark.parametrize("content_type", ["text/xml", "application/xml", "image/svg+xml", "application/atom+xml"])
def test_xml_tags_stripped_cdata_kept(content_type: str) -> None:
    xml = b'<?xml version="1.0"?><root a="attr"><item>first</item><![CDATA[<raw> second]]><!-- c --></root>'
    text = extract_text(content_type, xml)
    assert text is not None
    assert text.split() == ["first", "<raw>", "second"]


def test_xml_keeps_script_elements() -> None:
    # Only HTML drops script contents; in XML it is ordinary text.
    assert extract_text("application/xml", b"<script>words</script>").split() == ["words"]  # type: ignore[union-attr]


def test_json_string_values_in_document_order() -> None:
    doc = {"title": "Alpha", "n": 3, "tags": ["beta", {"deep": "gamma"}, None, True], "keyname": "delta"}
    assert extract_text("application/json", json.dumps(doc).encode()) == "Alpha beta gamma delta"
    assert extract_text("application/ld+json; charset=utf-8", b'{"k": "v"}') == "v"


def test_json_without_strings_or_invalid_has_no_text() -> None:
    assert extract_text("application/json", b'{"a": 1, "b": [true, null]}') is None
    assert extract_text("application/json", b"{not json") is None
    assert extract_text("application/json", b"") is None


def test_json_with_huge_integers_and_deep_nesting() -> None:
    assert extract_text("application/json", b'{"n": 123456789012345678901234567890, "s": "word"}') == "word"
    deep = b"[" * 500 + b'"bottom"' + b"]" * 500
    assert extract_text("application/json", deep) == "bottom"
    assert extract_text("application/json", b"[" * 100000) is None


@pytest.mark.parametrize(
    "content_type",
    ["application/octet-stream", "image/png", "application/pdf", "video/mp4", "", "nonsense", "application/zip"],
)
def test_other_types_have_no_text(content_type: str) -> None:
    assert not is_extractable(content_type)
    assert extract_text(content_type, b"readable words") is None


@pytest.mark.parametrize("content_type", ["text/plain", "text/html", "application/json", "application/rss+xml"])
def test_extractable_types(content_type: str) -> None:
    assert is_extractable(content_type)


def test_unclosed_markup_does_not_fail() -> None:
    assert strip_markup("<p>open <b>never closed <").split() == ["open", "never", "closed", "<"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["text/html", "text/xml", "application/json", "text/plain"]))
def test_extraction_never_raises(data: bytes, content_type: str) -> None:
    result = extract_text(content_type, data)
    assert result is None or isinstance(result, str)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.text() | st.integers() | st.booleans() | st.none(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_json_extraction_collects_every_string(value: object) -> None:
    strings: list[str] = []

    def walk(item: object) -> None:
        if isinstance(item, str):
            strings.append(item)
        elif isinstance(item, list):
            for element in item:
                walk(element)
        elif isinstance(item, dict):
            for element in item.values():
                walk(element)

    walk(value)
    expected = " ".join(strings) if strings else None
    assert extract_text("application/json", json.dumps(value).encode()) == expected
