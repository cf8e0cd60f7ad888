"""
L{oxidb._automaton.index_transitions}: a machine's indexed lookup answers
every C{(state, input)} exactly as automat's scan does, including
L{automat.NoTransition} for an input the state does not accept.
"""

from __future__ import annotations

from typing import Any

import pytest
from automat import NoTransition, TypeMachineBuilder
from automat._core import Automaton

from oxidb._automaton import index_transitions
from oxidb.server.lifecycle import ConnectionMachine


def _scan(automaton: Any, state: Any, symbol: Any) -> Any:
    """automat's own lookup (the class method, past the instance's index)."""
    new, outputs = Automaton.outputForInput(automaton, state, symbol)
    return new, tuple(outputs)


def test_connection_machine_lookup_equals_the_scan() -> None:
    automaton = ConnectionMachine.__automat_automaton__
    transitions = automaton.allTransitions()
    states = {t[0] for t in transitions} | {t[2] for t in transitions}
    symbols = {t[1] for t in transitions}
    answered = refused = 0
    for state in states:
        for symbol in symbols:
            try:
                expected = _scan(automaton, state, symbol)
            except NoTransition:
                with pytest.raises(NoTransition):
                    automaton.outputForInput(state, symbol)
                refused += 1
            else:
                new, outputs = automaton.outputForInput(state, symbol)
                assert (new, tuple(outputs)) == expected
                answered += 1
    assert answered == len(transitions)
    assert refused > 0


class _Inputs:
    def go(self) -> None:
        "Go."

    def stop(self) -> None:
        "Stop."


class _Core:
    pass


def test_a_small_machine_behaves_the_same_indexed() -> None:
    builder = TypeMachineBuilder(_Inputs, _Core)
    start = builder.state("start")
    running = builder.state("running")
    calls: list[str] = []
    start.upon(_Inputs.go).to(running)(lambda m, c: calls.append("went"))
    running.upon(_Inputs.stop).to(start)(lambda m, c: calls.append("stopped"))
    machine = index_transitions(builder.build())(_Core())
    machine.go()
    machine.stop()
    machine.go()
    assert calls == ["went", "stopped", "went"]
    with pytest.raises(NoTransition):
        machine.go()
