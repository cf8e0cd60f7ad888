"""
Log output for production, and the server's logger.

The server logs through C{twisted.logger} with structured fields (never
pre-rendered strings), so the same events can be written as text for people
or as JSON for machines. Under twistd::

    twistd -n --logger=oxidb.logs.json_observer oxidb

writes one JSON object per event and line to standard output
(L{event_as_json}: time, level name, namespace, the rendered message, a
failure's traceback, and every field of the event as a key), ready for a log
shipper.

Under twistd the server's debug events (a client connecting and going away,
which is what a load balancer's TCP health check does every second) are
dropped unless C{OXIDB_VERBOSE} is on: L{set_minimum_level}.
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

import json
import math
import re
import sys
import time
from typing import Any

from twisted.logger import FileLogObserver, LogEvent, LogLevel, formatEvent, formatEventAsClassicLogText
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


_LEVELS = [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical]

#: Events below this level are dropped by L{Logger}; C{None} keeps all.
_minimum: LogLevel | None = None


def set_minimum_level(level: LogLevel | None) -> None:
    """
    Drop the server's events below C{level} (C{None}: keep every event, the
    default). twistd's own observer writes debug events too, so the twistd
    entry point sets C{info} unless C{OXIDB_VERBOSE} is on.
    """
    global _minimum
    _minimum = level


class Logger(_TwistedLogger):
    """
    A C{twisted.logger.Logger} whose events carry no raw control characters
    in their fields: C{str} values are escaped, exception values become
    their escaped text. Keys starting with C{log_} (the logging system's
    own) are left alone. Use it as C{_log = Logger()}.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if _minimum is not None and _LEVELS.index(level) < _LEVELS.index(_minimum):
            return
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


#: Keys of L{event_as_json} itself; an event field of the same name is
#: written with a C{field_} prefix instead.
JSON_KEYS = ("time", "level", "namespace", "message", "failure")

#: Fields of Twisted's legacy (C{twisted.python.log}) events, already in
#: the rendered message.
_LEGACY_FIELDS = frozenset({"message", "format", "isError", "time", "system", "why", "failure", "printed"})


def _json_value(value: Any) -> Any:
    """C{value} if JSON can hold it as it is, else its text (an address, a set, an object)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v) for k, v in value.items()}
    return str(value)


def _iso_time(seconds: float) -> str:
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def event_as_json(event: LogEvent) -> dict[str, Any]:
    """
    One event as a flat JSON object: C{time} (ISO 8601, UTC), C{level}
    (C{debug} ... C{critical}), C{namespace}, C{message} (the rendered
    text), C{failure} (a traceback, when the event carries one), then the
    event's own fields (keys not starting with C{log_}), values that JSON
    cannot hold written as text.
    """
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": _iso_time(event.get("log_time") or time.time()),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace") or event.get("log_system") or "-",
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["failure"] = failure.getTraceback()
        except Exception:  # a failure that cannot render itself still gets a line
            out["failure"] = repr(failure)
    legacy = event.get("log_namespace") == "log_legacy" or "log_legacy" in event
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in _LEGACY_FIELDS):
            continue
        out[f"field_{key}" if key in JSON_KEYS else key] = _json_value(value)
    return out


def _json_line(event: LogEvent) -> str:
    # ASCII only: U+2028 and friends, which some readers take for line ends, stay escaped.
    return json.dumps(event_as_json(event)) + "\n"


def json_observer() -> FileLogObserver:
    """A twistd C{--logger} factory: L{event_as_json} objects, one per line, on stdout."""
    return FileLogObserver(sys.stdout, _json_line)
