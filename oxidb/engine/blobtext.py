"""
Text extraction from blob contents by content type (engine.md 8.4), for the
blob search index and the C{extract_text} command.

The content type is compared case-insensitively and without its parameters
(C{text/plain; charset=latin-1} is C{text/plain}); a C{charset} parameter
names the encoding of text types when Python knows it, UTF-8 otherwise.

  - C{text/html}, C{application/xhtml+xml}: tags stripped (each tag becomes a
    space), character references decoded, C{<script>} and C{<style>}
    contents dropped; undecodable bytes are replaced, as upstream does.
  - C{text/xml}, C{application/xml} and any C{+xml} type: tags stripped,
    CDATA sections kept as text.
  - C{application/json} and any C{+json} type: every string value,
    recursively, in document order, joined with spaces (keys are not text);
    invalid JSON or JSON without a string value has no text.
  - any other C{text/*}: the decoded bytes; text that does not decode has no
    text.
  - anything else (images, PDF, octet streams, ...): no text.

Pure functions: no I/O, no Twisted.
"""

from __future__ import annotations

import codecs
import json
from html.parser import HTMLParser
from typing import Any

import orjson

#: Bumped whenever extraction changes what it returns for some input, so
#: that stored search postings are rebuilt (see L{oxidb.engine.blobs}).
EXTRACTOR_VERSION = 1

_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_XML_TYPES = frozenset({"text/xml", "application/xml"})
_JSON_TYPES = frozenset({"application/json"})


def parse_content_type(content_type: str) -> tuple[str, str | None]:
    """The lower-cased media type and the C{charset} parameter (or None)."""
    media, _, params = content_type.partition(";")
    charset = None
    for param in params.split(";"):
        name, sep, value = param.partition("=")
        if sep and name.strip().lower() == "charset":
            charset = value.strip().strip('"').strip() or None
    return media.strip().lower(), charset


def is_extractable(content_type: str) -> bool:
    """Whether extraction is attempted for this type at all."""
    return _kind(parse_content_type(content_type)[0]) is not None


def extract_text(content_type: str, data: bytes) -> str | None:
    """The text of a blob, or None when its type or content has none."""
    media, charset = parse_content_type(content_type)
    kind = _kind(media)
    if kind is None:
        return None
    encoding = _encoding(charset)
    if kind == "json":
        return _json_text(data)
    if kind in ("html", "xml"):
        return strip_markup(data.decode(encoding, errors="replace"), html=kind == "html")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return None


def _kind(media: str) -> str | None:
    if media in _HTML_TYPES:
        return "html"
    if media in _XML_TYPES or media.endswith("+xml"):
        return "xml"
    if media in _JSON_TYPES or media.endswith("+json"):
        return "json"
    if media.startswith("text/"):
        return "text"
    return None


def _encoding(charset: str | None) -> str:
    """A text encoding Python knows for C{charset}, else UTF-8."""
    if charset is None:
        return "utf-8"
    try:
        info = codecs.lookup(charset)
    except LookupError:
        return "utf-8"
    # Only real text encodings (not base64, zlib, rot13, ...).
    return info.name if getattr(info, "_is_text_encoding", True) else "utf-8"


def _json_text(data: bytes) -> str | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits; the standard parser does not.
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            return None
    parts: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            parts.append(item)
        elif type(item) is list:
            stack.extend(reversed(item))
        elif type(item) is dict:
            stack.extend(reversed(list(item.values())))
    return " ".join(parts) if parts else None


class _MarkupText(HTMLParser):
    """Collects the character data of HTML or XML, a space for each tag."""

    _SKIPPED = frozenset({"script", "style"})

    def __init__(self, *, html: bool) -> None:
        super().__init__(convert_charrefs=True)
        self._html = html
        self._skipping: str | None = None
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if self._html and tag in self._SKIPPED:
            self._skipping = tag
        self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._skipping:
            self._skipping = None
        self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if self._skipping is None:
            self.parts.append(data)

    def unknown_decl(self, data: str) -> None:
        if data.startswith("CDATA["):
            self.parts.append(data[6:])


def strip_markup(text: str, *, html: bool = True) -> str:
    """C{text} without its tags, comments and processing instructions."""
    parser = _MarkupText(html=html)
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)
