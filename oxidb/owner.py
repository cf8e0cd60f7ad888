"""
L{current_owner}: the owner of the work submitted now (see
L{oxidb.server.workers}): the client connection whose request is being
dispatched, or None.

A module of its own so that the C{pipeline} command (L{oxidb.commands.core})
can keep a connection's later work its own without importing the server
package.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

current_owner: ContextVar[Any] = ContextVar("oxidb_work_owner", default=None)
