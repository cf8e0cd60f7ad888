"""
Role-based access control: L{Role} and the L{AccessTable} that says which
role may run which command.

The table is derived from the command registry's rows (each row names its
least role, L{oxidb.commands.Command.role}); it follows the documented
matrix (server.md 5, "docs" column; the product page), not upstream's
accidental denials: ReadWrite may run C{update_one}, C{delete_one},
C{drop_collection}, text indexes, C{drop_index} and C{delete_bucket}; Read
may run C{list_indexes} and C{text_search}. A command without a row is
Admin-only (fail-closed), so a misspelt or future command is never opened
by accident.

RBAC applies to authenticated sessions. Before login the dispatcher serves
only the registry's C{pre_auth} commands (and the health-check rows, such
as C{raft_metrics}, when the health checker is let in, see
L{AccessTable.open_before_login}).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs


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
    def parse(cls, text: object) -> Role | None:
        """Accept C{admin}, C{readWrite}, C{readwrite}, C{read}; else None."""
        if not isinstance(text, str):
            return None
        return _ROLE_INPUTS.get(text)

    def includes(self, other: Role) -> bool:
        return _RANK[self] >= _RANK[other]


_RANK = {Role.READ: 0, Role.READWRITE: 1, Role.ADMIN: 2}
_ROLE_INPUTS = {"admin": Role.ADMIN, "readWrite": Role.READWRITE, "readwrite": Role.READWRITE, "read": Role.READ}

@attrs.frozen
class AccessTable:
    """
    Which role may run which command, derived from the registry's rows.

    @ivar roles: command name -> the least role that may run it.
    @ivar health: the commands a health checker may run without a role when
        C{OXIDB_HEALTH_OPEN} is on (haproxy greps C{raft_metrics} for
        C{"state":"Leader"}).
    """

    roles: Mapping[str, Role]
    health: frozenset[str] = frozenset()

    @classmethod
    def from_rows(cls, rows: Iterable[Any]) -> AccessTable:
        """From command rows: anything with C{name}, C{role} and C{health_check}."""
        rows = list(rows)
        return cls(
            MappingProxyType({row.name: row.role for row in rows}),
            frozenset(row.name for row in rows if row.health_check),
        )

    def required_role(self, command: str) -> Role:
        """The least role that may run C{command}; Admin for unknown names."""
        return self.roles.get(command, Role.ADMIN)

    def allowed(self, role: Role, command: str, *, health_open: bool = False) -> bool:
        """
        May an authenticated session with C{role} run C{command}?

        @param health_open: C{OXIDB_HEALTH_OPEN} is on, which opens the
            L{health} commands to every role.
        """
        if health_open and command in self.health:
            return True
        return role.includes(self.required_role(command))

    def open_before_login(self, command: str, *, health_open: bool) -> bool:
        """
        May a session that has not logged in run C{command} beyond the
        registry's C{pre_auth} commands? Only the L{health} commands, and
        only when C{health_open}.
        """
        return health_open and command in self.health
