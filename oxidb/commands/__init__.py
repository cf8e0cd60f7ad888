"""
Wire commands, one module per family. Each module exposes C{COMMANDS}, a list
of L{Command} rows; L{build_registry} gathers them, with the login and user
commands when authentication is on and the C{raft_*} commands in cluster
mode.
"""

from __future__ import annotations

import importlib

from oxidb.commands._context import CommandContext, IDispatcher, IEngineSource, IExecutor, IServices, provides
from oxidb.commands._registry import Command, CommandRegistry, Handler
from oxidb.commands._schema import Field, JsonType, Schema
from oxidb.commands.auth import LOGIN_COMMANDS, USER_COMMANDS
from oxidb.commands.raft import RAFT_COMMANDS

#: Modules contributing commands, in no particular order. Add one line per
#: new family.
COMMAND_MODULES = (
    "oxidb.commands.aggregation",
    "oxidb.commands.collections",
    "oxidb.commands.crud",
    "oxidb.commands.indexes",
    "oxidb.commands.core",
    "oxidb.commands.status",
    "oxidb.commands.blobs",
    "oxidb.commands.backup",
    "oxidb.commands.transactions",
    "oxidb.commands.procedures",
    "oxidb.commands.explain",
    "oxidb.commands.snapshots",
    "oxidb.commands.databases",
    "oxidb.commands.watch",
)


def core_commands() -> list[Command]:
    """The rows every server has."""
    rows: list[Command] = []
    for name in COMMAND_MODULES:
        rows.extend(importlib.import_module(name).COMMANDS)
    return rows


def build_registry(*, auth: bool = False, cluster: bool = False, extra: tuple[Command, ...] = ()) -> CommandRegistry:
    """
    The complete registry of a server: the core rows, the login and user
    rows with C{auth}, the C{raft_*} rows with C{cluster}, and C{extra}
    (tests, embedders).
    """
    rows = core_commands()
    if auth:
        rows += [*LOGIN_COMMANDS, *USER_COMMANDS]
    if cluster:
        rows += RAFT_COMMANDS
    return CommandRegistry([*rows, *extra])


def default_registry() -> CommandRegistry:
    """The registry of a standalone server without authentication."""
    return build_registry()


def all_commands() -> CommandRegistry:
    """Every command the project has (authentication and cluster mode on)."""
    return build_registry(auth=True, cluster=True)


__all__ = [
    "Command",
    "CommandContext",
    "CommandRegistry",
    "Field",
    "Handler",
    "IDispatcher",
    "IEngineSource",
    "IExecutor",
    "IServices",
    "JsonType",
    "Schema",
    "all_commands",
    "build_registry",
    "core_commands",
    "default_registry",
    "provides",
]
