"""
Log output for production.

The server logs through C{twisted.logger} with structured fields (never
pre-rendered strings), so the same events can be written as text for people
or as JSON for machines. Under twistd::

    twistd -n --logger=oxidb.logs.json_observer oxidb

writes one JSON object per event to standard output (C{log_format} holds the
message template and every field is a key), ready for a log shipper.
C{OXIDB_GELF_ADDR} additionally sends server events to a GELF collector.
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver


def json_observer() -> FileLogObserver:
    """A twistd C{--logger} factory: JSON events, one per line, on stdout."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
