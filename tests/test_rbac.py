"""
The RBAC table (derived from the registry rows' roles, oxidb.auth.rbac)
against the documented matrix, written here from the issue text
independently of the rows: every command, every role.
"""

from __future__ import annotations

import pytest

from oxidb.auth.rbac import AccessTable, Role
from oxidb.commands import all_commands, build_registry
from oxidb.errors import PermissionDeniedError

#: Read: queries, counts, aggregations, search, list/get operations, status.
READ = {
    "ping", "hello", "pipeline",
    "find", "find_one", "count", "aggregate", "aggregate_docs", "explain",
    "text_search", "search", "vector_search",
    "list_collections", "list_indexes", "list_buckets", "list_objects", "get_object", "head_object",
    "extract_text", "list_procedures", "get_procedure", "list_schedules", "get_schedule",
    "server_status", "proc_status", "list_databases", "use_db",
    "snapshot_begin", "snapshot_find", "snapshot_count", "snapshot_aggregate", "snapshot_end",
    "watch", "unwatch",
}  # fmt: skip

#: ReadWrite adds CRUD, indexes, collections, transactions, blobs, running
#: procedures and switching schedules.
READWRITE = READ | {
    "insert", "insert_many", "update", "update_one", "delete", "delete_one", "find_and_modify",
    "create_index", "create_unique_index", "create_composite_index", "create_text_index", "create_vector_index",
    "drop_index",
    "create_collection", "drop_collection", "compact",
    "begin_tx", "commit_tx", "rollback_tx",
    "create_bucket", "delete_bucket", "put_object", "delete_object",
    "call_procedure", "enable_schedule", "disable_schedule",
}  # fmt: skip

#: Admin only: users, definitions, backup, cluster, and the login commands
#: once logged in.
ADMIN_ONLY = {
    "create_user", "drop_user", "update_user", "list_users", "grant_db_role", "revoke_db_role",
    "create_procedure", "delete_procedure", "create_schedule", "delete_schedule",
    "backup", "restore", "restore_documents", "create_ttl_index", "create_database", "drop_database",
    "raft_init", "raft_add_learner", "raft_change_membership", "raft_metrics",
    "raft_remove_node", "raft_transfer_leader", "raft_status",
    "authenticate", "authenticate_continue", "auth_simple",
}  # fmt: skip

#: Commands of the documented product matrix this server does not have yet.
#: Without a row they are Admin-only (fail closed); the issue that adds one
#: moves it into READ or READWRITE above with its documented role.
NOT_YET = {
    "fts_status",
    "find_for_update",
    "create_geo_index", "create_collection_with_options",
    "restore_to_point", "archive_status",
}  # fmt: skip

UNKNOWN = {"", "drop_everything", "FIND", "find ", "sql"} | NOT_YET

EXPECTED = {Role.READ: READ, Role.READWRITE: READWRITE, Role.ADMIN: READWRITE | ADMIN_ONLY | UNKNOWN}


@pytest.fixture(scope="module")
def table() -> AccessTable:
    return all_commands().access


def all_names() -> set[str]:
    return set(all_commands().names())


def test_every_command_is_in_the_expected_matrix() -> None:
    assert all_names() == READWRITE | ADMIN_ONLY, "add new commands to this matrix with their documented role"


def test_not_yet_commands_do_not_exist() -> None:
    assert not NOT_YET & all_names(), "a command of NOT_YET exists now: move it into the matrix"


def test_table_lists_exactly_the_registered_commands(table: AccessTable) -> None:
    assert set(table.roles) == READWRITE | ADMIN_ONLY


@pytest.mark.parametrize("role", list(Role))
def test_matrix(role: Role, table: AccessTable) -> None:
    for command in sorted(all_names() | READWRITE | ADMIN_ONLY | UNKNOWN):
        assert table.allowed(role, command) is (command in EXPECTED[role]), (role, command)


@pytest.mark.parametrize("auth, cluster", [(False, False), (True, False), (False, True), (True, True)])
def test_every_registry_of_a_server_agrees(auth: bool, cluster: bool) -> None:
    """A server's own registry (fewer rows) gives the same answers: missing rows are Admin-only."""
    table = build_registry(auth=auth, cluster=cluster).access
    for role in Role:
        for command in sorted(READWRITE | ADMIN_ONLY | UNKNOWN):
            assert table.allowed(role, command) is (command in EXPECTED[role]), (role, command)


def test_unknown_commands_are_admin_only(table: AccessTable) -> None:
    for command in UNKNOWN:
        assert table.required_role(command) is Role.ADMIN


def test_denial_text() -> None:
    assert str(PermissionDeniedError(Role.READWRITE.wire, "create_user")) == (
        "permission denied: role 'readWrite' cannot execute 'create_user'"
    )


def test_health_checker(table: AccessTable) -> None:
    for role in Role:
        assert table.allowed(role, "raft_metrics", health_open=True)
        assert table.allowed(role, "raft_init", health_open=True) is (role is Role.ADMIN)
    assert not table.allowed(Role.READ, "raft_metrics")
    assert table.open_before_login("raft_metrics", health_open=True)
    assert not table.open_before_login("raft_metrics", health_open=False)
    assert not table.open_before_login("find", health_open=True)
    assert table.health == {"raft_metrics"}


def test_role_spellings() -> None:
    assert [Role.parse(t) for t in ("admin", "readWrite", "readwrite", "read")] == [
        Role.ADMIN,
        Role.READWRITE,
        Role.READWRITE,
        Role.READ,
    ]
    assert Role.parse("Admin") is None and Role.parse(None) is None
    assert [r.stored for r in Role] == ["read", "readwrite", "admin"]
