"""
The RBAC table (oxidb.auth.rbac) against the documented matrix, written here
from the issue text independently of the table: every registered command,
every role.
"""

from __future__ import annotations

import pytest

from oxidb.auth.rbac import REQUIRED_ROLE, Role, allowed, open_before_login, required_role
from oxidb.commands import default_registry
from oxidb.commands.auth import LOGIN_COMMANDS, USER_COMMANDS
from oxidb.errors import PermissionDeniedError

#: Read: queries, counts, aggregations, search, list/get operations, status.
READ = {
    "ping", "hello", "pipeline",
    "find", "find_one", "count", "aggregate", "aggregate_docs", "explain",
    "text_search", "search", "vector_search",
    "snapshot_begin", "snapshot_find", "snapshot_count", "snapshot_aggregate", "snapshot_end",
    "list_collections", "list_indexes", "list_buckets", "list_objects", "get_object", "head_object",
    "extract_text", "list_procedures", "get_procedure", "list_schedules", "get_schedule",
    "server_status", "proc_status", "fts_status", "list_databases", "use_db",
}  # fmt: skip

#: ReadWrite adds CRUD, indexes, collections, transactions, blobs, running
#: procedures and switching schedules.
READWRITE = READ | {
    "insert", "insert_many", "update", "update_one", "delete", "delete_one",
    "find_and_modify", "find_for_update",
    "create_index", "create_unique_index", "create_composite_index", "create_text_index",
    "create_vector_index", "create_ttl_index", "create_geo_index", "drop_index",
    "create_collection", "create_collection_with_options", "drop_collection", "compact",
    "begin_tx", "commit_tx", "rollback_tx",
    "create_bucket", "delete_bucket", "put_object", "delete_object",
    "call_procedure", "enable_schedule", "disable_schedule",
}  # fmt: skip

#: Admin only: users, definitions, backup, cluster, databases, change streams,
#: and the login commands once logged in.
ADMIN_ONLY = {
    "create_user", "drop_user", "update_user", "list_users",
    "create_procedure", "delete_procedure", "create_schedule", "delete_schedule",
    "backup", "restore", "restore_to_point", "archive_status",
    "raft_init", "raft_add_learner", "raft_change_membership", "raft_metrics",
    "raft_remove_node", "raft_transfer_leader", "raft_status",
    "create_database", "drop_database", "watch", "unwatch",
    "authenticate", "authenticate_continue", "auth_simple",
}  # fmt: skip

UNKNOWN = {"", "drop_everything", "FIND", "find ", "grant_db_role", "sql"}

EXPECTED = {Role.READ: READ, Role.READWRITE: READWRITE, Role.ADMIN: READWRITE | ADMIN_ONLY | UNKNOWN}


def all_commands() -> set[str]:
    registered = set(default_registry().names())
    registered |= {row.name for row in LOGIN_COMMANDS + USER_COMMANDS}
    return registered


def test_every_registered_command_is_in_the_expected_matrix() -> None:
    unlisted = all_commands() - READWRITE - ADMIN_ONLY
    assert not unlisted, f"add these commands to the RBAC table and this test: {sorted(unlisted)}"


def test_table_lists_exactly_the_expected_commands() -> None:
    assert set(REQUIRED_ROLE) == READWRITE | ADMIN_ONLY


@pytest.mark.parametrize("role", list(Role))
def test_matrix(role: Role) -> None:
    for command in sorted(all_commands() | READWRITE | ADMIN_ONLY | UNKNOWN):
        assert allowed(role, command) is (command in EXPECTED[role]), (role, command)


def test_unknown_commands_are_admin_only() -> None:
    for command in UNKNOWN:
        assert required_role(command) is Role.ADMIN


def test_denial_text() -> None:
    assert str(PermissionDeniedError(Role.READWRITE.wire, "create_user")) == (
        "permission denied: role 'readWrite' cannot execute 'create_user'"
    )


def test_health_checker() -> None:
    for role in Role:
        assert allowed(role, "raft_metrics", health_open=True)
        assert allowed(role, "raft_init", health_open=True) is (role is Role.ADMIN)
    assert not allowed(Role.READ, "raft_metrics")
    assert open_before_login("raft_metrics", health_open=True)
    assert not open_before_login("raft_metrics", health_open=False)
    assert not open_before_login("find", health_open=True)


def test_role_spellings() -> None:
    assert [Role.parse(t) for t in ("admin", "readWrite", "readwrite", "read")] == [
        Role.ADMIN,
        Role.READWRITE,
        Role.READWRITE,
        Role.READ,
    ]
    assert Role.parse("Admin") is None and Role.parse(None) is None
    assert [r.stored for r in Role] == ["read", "readwrite", "admin"]
