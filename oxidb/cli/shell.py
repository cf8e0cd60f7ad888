"""
The interactive shell: prompt-toolkit for editing, history and completion
(commands from the registry catalog, collection names from the server, field
names from a sample of the collection's documents), rich for output.

A line is a command and its values as in one-shot mode (C{find people
{"age": {"$gt": 30}} limit=5}); a line with unclosed brackets or quotes
continues on the next. Built-ins: C{help}, C{help <command>}, C{exit}.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from rich.console import Console

from oxidb.cli.catalog import CATALOG, help_text, lookup
from oxidb.cli.output import show
from oxidb.cli.parse import ParseError, build_request, split_line, unbalanced
from oxidb.client.blocking import Client
from oxidb.client.errors import ClientError

__all__ = ["Shell", "ShellCompleter"]

BUILTINS = ("help", "exit", "quit")
_COLLECTION_COMMANDS = frozenset(
    name for name, entry in CATALOG.items() if entry["fields"] and entry["fields"][0]["name"] == "collection"
)
# The word being typed inside a JSON object, after "{" or ",", with or without its opening quote.
_JSON_KEY = re.compile(r'[{,]\s*"?([A-Za-z0-9_.$]*)$')


class ShellCompleter(Completer):
    """Commands, then collection names, then field names (inside JSON or as C{name=})."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        words = text.split()
        if not words or (len(words) == 1 and not text[-1:].isspace()):
            prefix = words[0] if words else ""
            for name in (*BUILTINS, *CATALOG):
                if name.startswith(prefix):
                    yield Completion(name, -len(prefix))
            return
        cmd = words[0]
        if cmd == "help":
            prefix = "" if text[-1:].isspace() else words[-1]
            for name in CATALOG:
                if name.startswith(prefix):
                    yield Completion(name, -len(prefix))
            return
        typing_second = len(words) == 1 or (len(words) == 2 and not text[-1:].isspace())
        if cmd in _COLLECTION_COMMANDS and typing_second:
            prefix = "" if len(words) == 1 else words[1]
            for name in self.shell.collections():
                if name.startswith(prefix):
                    yield Completion(name, -len(prefix))
            return
        key = _JSON_KEY.search(text)
        if key is not None and unbalanced(text) and cmd in _COLLECTION_COMMANDS and len(words) >= 2:
            prefix = key.group(1)
            for name in self.shell.fields(words[1]):
                if name.startswith(prefix):
                    yield Completion(name, -len(prefix))
            return
        if not text[-1:].isspace() and not unbalanced(text):
            prefix = words[-1]
            entry = CATALOG.get(cmd)
            for field in entry["fields"] if entry else []:
                if field["name"].startswith(prefix):
                    yield Completion(field["name"] + "=", -len(prefix))


class Shell:
    """
    The read-eval-print loop.

    @param history: the history file (default C{~/.oxidb_history}; C{""} keeps history in memory).
    """

    def __init__(self, client: Client, console: Console, *, raw: bool = False, history: str | None = None) -> None:
        self.client = client
        self.console = console
        self.raw = raw
        self._collections: list[str] | None = None
        self._fields: dict[str, list[str]] = {}
        if history is None:
            history = os.path.join(os.path.expanduser("~"), ".oxidb_history")
        self.history: History = FileHistory(history) if history else InMemoryHistory()

    def prompt_text(self) -> str:
        """C{user@host:port/db> } (the first seed, or the server connected to)."""
        options = self.client.options
        host, port = self.client.address or options.seeds[0]
        user = f"{options.user}@" if options.user else ""
        return f"{user}{host}:{port}/{options.database or 'oxidb'}> "

    def collections(self) -> list[str]:
        if self._collections is None:
            try:
                self._collections = list(self.client.list_collections())
            except ClientError:
                return []
        return self._collections

    def fields(self, collection: str) -> list[str]:
        if collection not in self._fields:
            names: list[str] = []
            try:
                for doc in self.client.find(collection, {}, limit=20):
                    names.extend(k for k in doc if k not in names)
            except ClientError:
                return []
            self._fields[collection] = names
        return self._fields[collection]

    def run(self) -> None:
        session: PromptSession[str] = PromptSession(history=self.history, completer=ShellCompleter(self))
        self.console.print("oxidb shell: 'help' lists commands, 'help <command>' explains one, Ctrl-D leaves.")
        while True:
            try:
                line = session.prompt(self.prompt_text())
                while unbalanced(line):
                    line += "\n" + session.prompt("... ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            if not self.execute(line):
                return

    def execute(self, line: str) -> bool:
        """Run one input; False when the shell should end."""
        text = line.strip()
        if not text:
            return True
        word, _, rest = text.partition(" ")
        if word in ("exit", "quit"):
            return False
        if word == "help":
            self.console.print(help_text(rest.strip()) if rest.strip() else self._overview(), markup=False)
            return True
        if word in ("watch", "unwatch"):
            # A watch takes its connection over: it has a command of its own.
            self._error(f"'{word}' does not run in the shell: use 'oxidb-cli watch [COLLECTION]'")
            return True
        try:
            request = build_request(split_line(text))
            if request["cmd"] == "use_db" and isinstance(request.get("name"), str):
                # Through the client, which keeps it (reconnections, prompt).
                result = self.client.use_database(request["name"])
            else:
                result = self.client.request(request)
        except (ParseError, ValueError, TypeError, ClientError) as e:
            self._error(str(e))
            return True
        entry = lookup(request["cmd"])
        if request["cmd"] == "use_db":
            self._fields.clear()
        if entry is None or entry["writes"] or request["cmd"] == "use_db":
            self._collections = None
            self._fields.pop(str(request.get("collection")), None)
        show(self.console, result, raw=self.raw)
        return True

    def _error(self, message: str) -> None:
        self.console.print(f"error: {' '.join(message.split())}", style="red", markup=False, highlight=False)

    def _overview(self) -> str:
        width = max(len(name) for name in CATALOG)
        lines = [f"{name:<{width}}  {entry['summary']}" for name, entry in CATALOG.items()]
        return "\n".join(["Commands (help <command> for its fields):", *lines])

    def __repr__(self) -> str:
        return f"Shell({self.prompt_text()!r})"
