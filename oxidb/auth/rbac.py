"""
Role-based access control: the one table that says which role may run which
command.

The table follows the documented matrix (server.md 5, "docs" column; the
product page), not upstream's accidental denials: ReadWrite may run
C{update_one}, C{delete_one}, C{drop_collection}, text indexes, C{drop_index}
and C{delete_bucket}; Read may run C{list_indexes} and C{text_search}.
Anything not in the table is Admin-only (fail-closed), so a misspelt or
future command is never opened by accident.

RBAC applies to authenticated sessions. Before login the dispatcher serves
only the registry's C{pre_auth} commands (and C{raft_metrics} when the health
checker is let in, see L{open_before_login}).
"""

from __future__ import annotations

import enum


class Role(enum.Enum):
    """Roles, ordered by what they may do. C{.value} is the wire spelling."""

    READ = "read"
    READWRITE = "readWrite"
    ADMIN = "admin"

    @property
    def wire(self) -> str:
        return self.value

    @property
    def stored(self) -> str:
        """The spelling in C{users.json} (lowercase)."""
        return self.value.lower()

    @classmethod
    def parse(cls, text: object) -> "Role | None":
        """Accept C{admin}, C{readWrite}, C{readwrite}, C{read}; else None."""
        if not isinstance(text, str):
            return None
        return _ROLE_INPUTS.get(text)

    def includes(self, other: "Role") -> bool:
        return _RANK[self] >= _RANK[other]


_RANK = {Role.READ: 0, Role.READWRITE: 1, Role.ADMIN: 2}
_ROLE_INPUTS = {"admin": Role.ADMIN, "readWrite": Role.READWRITE, "readwrite": Role.READWRITE, "read": Role.READ}

_READ = Role.READ
_RW = Role.READWRITE
_ADMIN = Role.ADMIN

#: command name -> the least role that may run it. Every command of the
#: project is listed, Admin-only ones too, so that this table is the whole
#: matrix; a name missing here is Admin-only all the same.
REQUIRED_ROLE: dict[str, Role] = {
    # Always open. C{pipeline} is only the wrapper: each element is checked.
    "ping": _READ,
    "hello": _READ,
    "pipeline": _READ,
    # Queries, counts, aggregations, search.
    "find": _READ,
    "find_one": _READ,
    "count": _READ,
    "aggregate": _READ,
    "aggregate_docs": _READ,
    "explain": _READ,
    "text_search": _READ,
    "search": _READ,
    "vector_search": _READ,
    "snapshot_begin": _READ,
    "snapshot_find": _READ,
    "snapshot_count": _READ,
    "snapshot_aggregate": _READ,
    "snapshot_end": _READ,
    # List and get operations, status.
    "list_collections": _READ,
    "list_indexes": _READ,
    "list_buckets": _READ,
    "list_objects": _READ,
    "get_object": _READ,
    "head_object": _READ,
    "extract_text": _READ,
    "list_procedures": _READ,
    "get_procedure": _READ,
    "list_schedules": _READ,
    "get_schedule": _READ,
    "server_status": _READ,
    "proc_status": _READ,
    "fts_status": _READ,
    "list_databases": _READ,
    "use_db": _READ,
    # CRUD.
    "insert": _RW,
    "insert_many": _RW,
    "update": _RW,
    "update_one": _RW,
    "delete": _RW,
    "delete_one": _RW,
    "find_and_modify": _RW,
    "find_for_update": _RW,
    # Indexes.
    "create_index": _RW,
    "create_unique_index": _RW,
    "create_composite_index": _RW,
    "create_text_index": _RW,
    "create_vector_index": _RW,
    "create_ttl_index": _RW,
    "create_geo_index": _RW,
    "drop_index": _RW,
    # Collections.
    "create_collection": _RW,
    "create_collection_with_options": _RW,
    "drop_collection": _RW,
    "compact": _RW,
    # Transactions.
    "begin_tx": _RW,
    "commit_tx": _RW,
    "rollback_tx": _RW,
    # Blobs.
    "create_bucket": _RW,
    "delete_bucket": _RW,
    "put_object": _RW,
    "delete_object": _RW,
    # Procedures and schedules: running them, not defining them.
    "call_procedure": _RW,
    "enable_schedule": _RW,
    "disable_schedule": _RW,
    # Definitions of procedures and schedules.
    "create_procedure": _ADMIN,
    "delete_procedure": _ADMIN,
    "create_schedule": _ADMIN,
    "delete_schedule": _ADMIN,
    # Backup and restore.
    "backup": _ADMIN,
    "restore": _ADMIN,
    "restore_to_point": _ADMIN,
    "archive_status": _ADMIN,
    # Cluster management (raft_metrics: see HEALTH_COMMANDS).
    "raft_init": _ADMIN,
    "raft_add_learner": _ADMIN,
    "raft_change_membership": _ADMIN,
    "raft_metrics": _ADMIN,
    "raft_remove_node": _ADMIN,
    "raft_transfer_leader": _ADMIN,
    "raft_status": _ADMIN,
    # User and database management, change streams.
    "create_user": _ADMIN,
    "drop_user": _ADMIN,
    "update_user": _ADMIN,
    "list_users": _ADMIN,
    "create_database": _ADMIN,
    "drop_database": _ADMIN,
    "watch": _ADMIN,
    "unwatch": _ADMIN,
    # The login commands are pre_auth: before login anyone may run them.
    # After login they are ordinary unknown commands (server.md 4.8):
    # non-admins are denied, admins get "unknown command".
    "authenticate": _ADMIN,
    "authenticate_continue": _ADMIN,
    "auth_simple": _ADMIN,
}

#: Commands a health checker may run without a role when C{OXIDB_HEALTH_OPEN}
#: is on (haproxy greps C{raft_metrics} for C{"state":"Leader"}).
HEALTH_COMMANDS = frozenset({"raft_metrics"})


def required_role(command: str) -> Role:
    """The least role that may run C{command}; Admin for unknown names."""
    return REQUIRED_ROLE.get(command, Role.ADMIN)


def allowed(role: Role, command: str, *, health_open: bool = False) -> bool:
    """
    May an authenticated session with C{role} run C{command}?

    @param health_open: C{OXIDB_HEALTH_OPEN} is on, which opens the
        L{HEALTH_COMMANDS} to every role.
    """
    if health_open and command in HEALTH_COMMANDS:
        return True
    return role.includes(required_role(command))


def open_before_login(command: str, *, health_open: bool) -> bool:
    """
    May a session that has not logged in run C{command} beyond the registry's
    C{pre_auth} commands? Only the L{HEALTH_COMMANDS}, and only when
    C{health_open}.
    """
    return health_open and command in HEALTH_COMMANDS
