"""
Named methods for the common commands, shared by both clients: each builds
the request and hands it to C{self.command}, which returns the data (the
blocking client) or a Deferred firing with it (the Twisted client).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CommandMethods", "page_query"]


def page_query(query: dict[str, Any] | None, after: Any) -> dict[str, Any]:
    """C{query} restricted to documents whose C{_id} is above C{after} (keyset paging)."""
    if after is None:
        return dict(query or {})
    if not query:
        return {"_id": {"$gt": after}}
    return {"$and": [query, {"_id": {"$gt": after}}]}


class CommandMethods:
    """The request builders; subclasses provide L{command}."""

    def command(self, cmd: str, **fields: Any) -> Any:
        raise NotImplementedError

    def ping(self) -> Any:
        return self.command("ping")

    def insert(self, collection: str, doc: dict[str, Any]) -> Any:
        return self.command("insert", collection=collection, doc=doc)

    def insert_many(self, collection: str, docs: list[dict[str, Any]]) -> Any:
        return self.command("insert_many", collection=collection, docs=docs)

    def find(
        self,
        collection: str,
        query: dict[str, Any] | None = None,
        *,
        sort: dict[str, int] | None = None,
        skip: int | None = None,
        limit: int | None = None,
    ) -> Any:
        fields: dict[str, Any] = {"collection": collection, "query": query or {}}
        for name, value in (("sort", sort), ("skip", skip), ("limit", limit)):
            if value is not None:
                fields[name] = value
        return self.command("find", **fields)

    def find_one(self, collection: str, query: dict[str, Any] | None = None) -> Any:
        return self.command("find_one", collection=collection, query=query or {})

    def count(self, collection: str, query: dict[str, Any] | None = None) -> Any:
        return self.command("count", collection=collection, query=query or {})

    def update(self, collection: str, query: dict[str, Any], update: dict[str, Any]) -> Any:
        return self.command("update", collection=collection, query=query, update=update)

    def update_one(self, collection: str, query: dict[str, Any], update: dict[str, Any]) -> Any:
        return self.command("update_one", collection=collection, query=query, update=update)

    def delete(self, collection: str, query: dict[str, Any]) -> Any:
        return self.command("delete", collection=collection, query=query)

    def delete_one(self, collection: str, query: dict[str, Any]) -> Any:
        return self.command("delete_one", collection=collection, query=query)

    def aggregate(self, collection: str, pipeline: list[dict[str, Any]]) -> Any:
        return self.command("aggregate", collection=collection, pipeline=pipeline)

    def create_collection(self, collection: str) -> Any:
        return self.command("create_collection", collection=collection)

    def drop_collection(self, collection: str) -> Any:
        return self.command("drop_collection", collection=collection)

    def list_collections(self) -> Any:
        return self.command("list_collections")

    def create_index(self, collection: str, field: str) -> Any:
        return self.command("create_index", collection=collection, field=field)

    def create_unique_index(self, collection: str, field: str) -> Any:
        return self.command("create_unique_index", collection=collection, field=field)

    def list_indexes(self, collection: str) -> Any:
        return self.command("list_indexes", collection=collection)

    def server_status(self) -> Any:
        return self.command("server_status")

    # -- databases ----------------------------------------------------------

    def _then(self, result: Any, fn: Callable[[Any], None]) -> Any:
        """Call C{fn} with the command's data once it succeeded; the data (or its Deferred)."""
        raise NotImplementedError

    def _database_selected(self, name: str) -> None:
        """Remember C{name}: every connection opened from now on switches to it."""
        raise NotImplementedError

    def use_database(self, name: str) -> Any:
        """C{use_db}: the connection's current database, kept across reconnections."""
        return self._then(self.command("use_db", name=name), lambda _: self._database_selected(name))

    def create_database(self, name: str) -> Any:
        return self.command("create_database", name=name)

    def drop_database(self, name: str) -> Any:
        return self.command("drop_database", name=name)

    def list_databases(self) -> Any:
        return self.command("list_databases")

    def grant_db_role(self, username: str, database: str, role: str) -> Any:
        return self.command("grant_db_role", username=username, database=database, role=role)

    def revoke_db_role(self, username: str, database: str) -> Any:
        return self.command("revoke_db_role", username=username, database=database)
