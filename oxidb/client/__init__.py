"""
The oxidb client library: a blocking client (L{Client}, L{connect}) and a
Twisted client (L{oxidb.client.twisted}) sharing one sans-IO protocol core
(L{oxidb.client.core}). Connection URLs:
C{oxidb://user:pass@host:port[,host:port...]/db?tls=true&ca=FILE}.
See docs/client.md.
"""

from __future__ import annotations

from oxidb.client.blocking import Client, connect
from oxidb.client.errors import (
    AuthenticationFailed,
    ClientError,
    ConnectionFailed,
    InsertStreamFailed,
    NotLeader,
    PermissionDenied,
    ServerError,
    TransactionConflict,
    UnknownOutcome,
)
from oxidb.client.url import ConnectOptions, parse_url

__all__ = [
    "AuthenticationFailed",
    "Client",
    "ClientError",
    "ConnectOptions",
    "ConnectionFailed",
    "InsertStreamFailed",
    "NotLeader",
    "PermissionDenied",
    "ServerError",
    "TransactionConflict",
    "UnknownOutcome",
    "connect",
    "parse_url",
]
