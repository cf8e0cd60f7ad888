"""
Constant-time transitions for a built automat machine.

automat's C{Automaton.outputForInput} finds a transition by scanning every
transition of the machine and comparing C{(state, input)} tuples (dataclass
equality): the connection machine has about 150 transitions, so each input
on a request's path cost tens of microseconds of reactor CPU. A built
machine's transitions never change, so L{index_transitions} gives its
automaton a dict from C{(state, input)} to the same answer. The result is the
same for every input, including L{automat.NoTransition} for an input the
state does not accept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from automat import NoTransition, TypeMachine


def index_transitions(machine: TypeMachine[Any, Any]) -> TypeMachine[Any, Any]:
    """
    Make C{machine}'s transition lookup a dict lookup; returns C{machine}.

    Call it once the machine is built (C{builder.build()}): transitions
    added later would not be seen.
    """
    automaton = machine.__automat_automaton__
    table: dict[tuple[Any, Any], tuple[Any, Sequence[Any]]] = {}
    for old, symbol, new, outputs in automaton.allTransitions():
        table[(old, symbol)] = (new, tuple(outputs))
    # automat keeps the fallback (set by unhandledTransition()) privately.
    unhandled: tuple[Any, Sequence[Any]] | None = automaton._unhandledTransition

    def output_for_input(in_state: Any, input_symbol: Any) -> tuple[Any, Sequence[Any]]:
        found = table.get((in_state, input_symbol))
        if found is not None:
            return found
        if unhandled is None:
            raise NoTransition(state=in_state, symbol=input_symbol)
        return unhandled

    # An instance attribute: this automaton only, the class stays automat's.
    automaton.outputForInput = output_for_input  # type: ignore[method-assign, assignment]
    return machine
