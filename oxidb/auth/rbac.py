"""
Role-based access control: the one table that says which role may run which
command.

The table follows the documented matrix (server.md 5, "docs" column; the
product page), not upstream's accidental denials. Anything not in the table is
Admin-only (fail-closed).
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


#: command name -> the least role that may run it. Commands missing here are
#: Admin-only. C{ping}, C{hello} and the login commands are open to everyone
#: and are handled before this table is consulted.
REQUIRED_ROLE: dict[str, Role] = {
    "ping": Role.READ,
}


def required_role(command: str) -> Role:
    return REQUIRED_ROLE.get(command, Role.ADMIN)


def allowed(role: Role, command: str) -> bool:
    return role.includes(required_role(command))
