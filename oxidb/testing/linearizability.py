"""
A linearizability checker for key-value histories (Wing & Gong / Lowe's
WGL search with memoization, split per key as Porcupine does).

An L{Op} is a C{put}, C{append} or C{get} on one key with a call time and a
return time; C{ret=None} means the outcome is unknown (the client timed out):
such a write may have taken effect at any point after its call, or never.
Times must come from one total order (e.g. a global event counter).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import attrs


@attrs.frozen
class Op:
    client: int
    kind: str  # "put" | "append" | "get"
    key: str
    value: Any = None  # the written value (put, append)
    call: int = 0
    ret: int | None = None  # None: outcome unknown
    output: Any = None  # what a get returned


def kv_step(state: Any, op: Op) -> tuple[bool, Any]:
    """The register model: a missing key reads as C{None}; append concatenates strings."""
    if op.kind == "put":
        return True, op.value
    if op.kind == "append":
        return True, (state or "") + op.value
    if op.kind == "get":
        return op.output == state, state
    raise ValueError(f"unknown operation {op.kind!r}")


@attrs.define(eq=False)
class _Node:
    op: int
    is_call: bool
    match: _Node | None = None  # a call's return node
    prev: _Node | None = None
    next: _Node | None = None


def _lift(node: _Node) -> None:
    for n in (node, node.match):
        if n is not None:
            assert n.prev is not None
            n.prev.next = n.next
            if n.next is not None:
                n.next.prev = n.prev


def _unlift(node: _Node) -> None:
    for n in (node.match, node):
        if n is not None:
            assert n.prev is not None
            n.prev.next = n
            if n.next is not None:
                n.next.prev = n


def check_key(ops: list[Op]) -> bool:
    """Is this single-key history linearizable?"""
    ops = [op for op in ops if not (op.kind == "get" and op.ret is None)]
    events: list[tuple[int, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, i))
        if op.ret is not None:
            if op.ret < op.call:
                raise ValueError(f"operation returns before its call: {op}")
            events.append((op.ret, 1, i))
    events.sort()
    head = _Node(-1, True)
    tail = head
    calls: dict[int, _Node] = {}
    for _time, kind, i in events:
        node = _Node(i, kind == 0, prev=tail)
        tail.next = node
        tail = node
        if kind == 0:
            calls[i] = node
        else:
            calls[i].match = node
    remaining = sum(op.ret is not None for op in ops)
    state: Any = None
    linearized = 0
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[_Node, Any]] = []
    entry = head.next
    while remaining:
        if entry is not None and entry.is_call:
            ok, new_state = kv_step(state, ops[entry.op])
            if ok:
                key = (linearized | (1 << entry.op), new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state, linearized = new_state, key[0]
                    _lift(entry)
                    remaining -= entry.match is not None
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not stack:
                return False
            entry, state = stack.pop()
            linearized &= ~(1 << entry.op)
            _unlift(entry)
            remaining += entry.match is not None
            entry = entry.next
    return True


def check_history(ops: Iterable[Op]) -> list[str]:
    """The keys whose sub-history is not linearizable (empty: all fine)."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    return sorted(key for key, key_ops in by_key.items() if not check_key(key_ops))
