"""
The graphs in docs/state-machines/ are those of the machines in the code
(L{oxidb.machines}), and the login machine on its own: steps out of order
have no transition.
"""

from __future__ import annotations

import os

import pytest
from automat import NoTransition

from oxidb import machines
from oxidb.auth.login import Login
from oxidb.auth.rbac import Role
from oxidb.auth.scram import ScramExchange
from oxidb.errors import UnknownCommandError
from oxidb.server.session import Session

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "state-machines")


@pytest.mark.parametrize("name", sorted(machines.MACHINES))
def test_checked_in_graph_is_current(name: str) -> None:
    with open(os.path.join(DOCS, f"{name}.dot"), encoding="utf-8") as f:
        assert f.read() == machines.to_dot(name), "run: python -m oxidb.machines docs/state-machines"


def test_check_mode_reports_a_stale_graph(tmp_path: os.PathLike[str]) -> None:
    assert machines.main([str(tmp_path)]) == 0
    assert machines.main([str(tmp_path), "--check"]) == 0
    with open(os.path.join(str(tmp_path), "login.dot"), "a", encoding="utf-8") as f:
        f.write("// edited by hand\n")
    assert machines.main([str(tmp_path), "--check"]) == 1


def test_every_state_is_reachable_and_drawn() -> None:
    for name, (_, machine) in machines.MACHINES.items():
        automaton = machine.__automat_automaton__
        reached = {automaton.initialState}
        frontier = [automaton.initialState]
        transitions = automaton.allTransitions()
        while frontier:
            state = frontier.pop()
            for old, _, new, _ in transitions:
                if old == state and new not in reached:
                    reached.add(new)
                    frontier.append(new)
        assert reached == automaton.states(), name
        graph = machines.to_dot(name)
        for state in reached:
            assert f'"{state.name}" [label=' in graph


# --- the login machine on its own -------------------------------------------------


def test_a_session_with_a_role_starts_logged_in() -> None:
    session = Session(peer="-", user="root", role=Role.ADMIN)
    with pytest.raises(UnknownCommandError):
        session.login.machine.attempt("auth_simple")
    with pytest.raises(UnknownCommandError):
        session.login.machine.scram_final("authenticate_continue")


def test_final_step_before_the_first_finds_no_exchange() -> None:
    session = Session(peer="-")
    assert session.login.machine.scram_final("authenticate_continue") is None
    assert session.auth_state is None


def test_limits_lift_only_once_the_login_reply_is_written() -> None:
    session = Session(peer="-")
    events: list[str] = []
    session.login.attach(lambda: events.append("lifted"), lambda: events.append("expired"))
    session.login.reply_written()  # a ping's reply before login
    session.login.machine.succeeded("alice", Role.READ)
    assert (session.user, session.role) == ("alice", Role.READ) and events == []
    session.login.deadline_passed()  # too late to expire: the login succeeded
    session.login.reply_written()
    session.login.reply_written()
    assert events == ["lifted"]


def test_the_deadline_expires_an_exchange_in_progress() -> None:
    session = Session(peer="-")
    events: list[str] = []
    session.login.attach(lambda: events.append("lifted"), lambda: events.append("expired"))
    exchange = ScramExchange("alice", True, "r=nonce,s=salt,i=4096", None)
    session.login.machine.server_first_sent(exchange)
    assert session.auth_state is exchange
    session.login.deadline_passed()
    assert events == ["expired"] and session.login.machine.exchange() is None
    # A step that finishes after the connection expired changes nothing.
    session.login.machine.succeeded("alice", Role.READ)
    assert session.role is None


def test_a_step_out_of_order_has_no_transition() -> None:
    session = Session(peer="-", user="root", role=Role.ADMIN)
    with pytest.raises(NoTransition):
        session.login.machine.server_first_sent(ScramExchange("alice", True, "r=nonce,s=salt,i=4096", None))
    # A closed login ignores the end of a step that was under way.
    login = Login(Session(peer="-"))
    login.lost()
    login.machine.succeeded("alice", Role.READ)
    assert login.machine.exchange() is None
