"""The server's name for L{oxidb.workers}, which the Raft package shares."""

from oxidb.workers import WorkerPool, current_owner

__all__ = ["WorkerPool", "current_owner"]
