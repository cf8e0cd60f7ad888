"""
Wire commands, one module per family. Each module exposes C{COMMANDS}, a list
of L{Command} rows; L{default_registry} gathers them.
"""

from __future__ import annotations

import importlib

from oxidb.commands._context import CommandContext, IExecutor, IServices
from oxidb.commands._registry import Command, CommandRegistry, Handler

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
)


def default_registry() -> CommandRegistry:
    registry = CommandRegistry()
    for name in COMMAND_MODULES:
        registry.extend(importlib.import_module(name).COMMANDS)
    return registry


__all__ = [
    "Command",
    "CommandContext",
    "CommandRegistry",
    "Handler",
    "IExecutor",
    "IServices",
    "default_registry",
]
