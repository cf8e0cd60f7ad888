"""
Log output for production, and the server's logger.

The server logs through C{twisted.logger} with structured fields (never
pre-rendered strings), so the same events can be written as text for people
or as JSON for machines. Under twistd::

    twistd -n --logger=oxidb.logs.json_observer oxidb

writes one JSON object per event to standard output (C{log_format} holds the
message template and every field is a key), ready for a log shipper.
C{--logger=oxidb.logs.text_observer} writes twistd's classic text lines with
control characters escaped. C{OXIDB_GELF_ADDR} additionally sends server
events to a GELF collector.

Client-supplied strings (user names, collection names, commands, peers,
error texts quoting them) must never reach a log raw: a newline forges a
log line, C{\\r} or an ANSI escape (C{\\x1b[...}) rewrites what a terminal
shows. Every module logs through L{Logger}, which escapes control
characters in the string (and exception) fields of each event before any
observer sees it, so the text log, the JSON log and GELF all get the
escaped text. L{text_observer} also escapes the rendered line itself
(tracebacks of failures included), keeping only its line breaks.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from twisted.logger import FileLogObserver, LogLevel, formatEventAsClassicLogText, jsonFileLogObserver
from twisted.logger import Logger as _TwistedLogger

#: C0 controls, DEL, C1 controls and the Unicode line/paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """C{text} with every control character written as a visible escape (C{\\n}, C{\\x1b})."""
    return _CONTROL.sub(_escaped, text)


def _escape_field(value: Any) -> Any:
    if isinstance(value, str):
        return escape_control(value)
    if isinstance(value, BaseException):
        return escape_control(str(value))
    return value


class Logger(_TwistedLogger):
    """
    A C{twisted.logger.Logger} whose events carry no raw control characters
    in their fields: C{str} values are escaped, exception values become
    their escaped text. Keys starting with C{log_} (the logging system's
    own) are left alone. Use it as C{_log = Logger()}.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            if not key.startswith("log_"):
                kwargs[key] = _escape_field(value)
        super().emit(level, format, **kwargs)


#: What L{text_observer} escapes: L{_CONTROL} but tabs and line feeds
#: (Twisted writes a multi-line event as lines indented with a tab).
_RENDERED_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_rendered(text: str | None) -> str | None:
    """A rendered event with every control character escaped but its tab-indented line breaks."""
    if text is None:
        return None
    return _RENDERED_CONTROL.sub(_escaped, text)


def text_observer() -> FileLogObserver:
    """
    A twistd C{--logger} factory: twistd's classic text lines on stdout,
    with control characters escaped (continuation lines of a traceback stay
    lines, indented by Twisted).
    """
    return FileLogObserver(sys.stdout, lambda event: _escape_rendered(formatEventAsClassicLogText(event)))


def json_observer() -> FileLogObserver:
    """A twistd C{--logger} factory: JSON events, one per line, on stdout."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
