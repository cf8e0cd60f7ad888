"""
The linearizability checker itself, on known good and bad histories and
against a brute-force search on random small histories.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxidb.testing import Op, check_history, check_key, kv_step


def op(
    kind: str,
    call: int,
    ret: int | None,
    value: str | None = None,
    output: str | None = None,
    key: str = "x",
    client: int = 0,
) -> Op:
    return Op(client, kind, key, value, call, ret, output)


def test_sequential_history_is_linearizable() -> None:
    history = [op("put", 1, 2, "a"), op("get", 3, 4, output="a"), op("append", 5, 6, "b"), op("get", 7, 8, output="ab")]
    assert check_key(history)


def test_stale_read_after_a_completed_write_is_not() -> None:
    history = [op("put", 1, 2, "a"), op("put", 3, 4, "b"), op("get", 5, 6, output="a")]
    assert not check_key(history)


def test_concurrent_reads_may_see_either_side_of_a_write() -> None:
    history = [
        op("put", 1, 2, "a"),
        op("put", 3, 10, "b"),
        op("get", 4, 5, output="b", client=1),
        op("get", 6, 7, output="a", client=2),  # after a read saw b: not linearizable
    ]
    assert not check_key(history)
    history[3] = op("get", 4, 7, output="a", client=2)  # overlaps the first read
    assert check_key(history)


def test_pending_write_may_take_effect_or_not() -> None:
    pending = op("put", 1, None, "a")
    assert check_key([pending, op("get", 5, 6, output="a")])
    assert check_key([pending, op("get", 5, 6, output=None)])
    # Once seen it cannot be unseen.
    assert not check_key([pending, op("get", 5, 6, output="a"), op("get", 7, 8, output=None)])
    # And it cannot take effect before its call.
    assert not check_key([op("get", 1, 2, output="a"), op("put", 3, None, "a")])


def test_pending_reads_do_not_constrain() -> None:
    assert check_key([op("put", 1, 2, "a"), op("get", 3, None, output="zzz")])


def test_appends_must_compose_in_one_order() -> None:
    history = [
        op("append", 1, 5, "a", client=1),
        op("append", 2, 6, "b", client=2),
        op("get", 7, 8, output="ab"),
        op("get", 9, 10, output="ba"),
    ]
    assert not check_key(history)
    assert check_key(history[:3])


def test_histories_are_split_per_key() -> None:
    history = [
        op("put", 1, 2, "a", key="k1"),
        op("get", 3, 4, output=None, key="k1"),
        op("put", 1, 2, "a", key="k2"),
        op("get", 3, 4, output="a", key="k2"),
    ]
    assert check_history(history) == ["k1"]


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="returns before its call"):
        check_key([op("put", 5, 2, "a")])
    with pytest.raises(ValueError, match="unknown operation"):
        kv_step(None, op("cas", 1, 2))


def brute_force(ops: list[Op]) -> bool:
    """Try every subset of pending writes in every order consistent with real time."""
    done = [o for o in ops if o.ret is not None]
    pending = [o for o in ops if o.ret is None and o.kind != "get"]
    for r in range(len(pending) + 1):
        for chosen in itertools.combinations(pending, r):
            for order in itertools.permutations(done + list(chosen)):
                if any(
                    b.ret is not None and b.ret < a.call
                    for i, a in enumerate(order)
                    for b in order[i + 1 :]
                ):
                    continue
                state = None
                for o in order:
                    ok, state = kv_step(state, o)
                    if not ok:
                        break
                else:
                    return True
    return False


@st.composite
def histories(draw: st.DrawFn) -> list[Op]:
    n = draw(st.integers(1, 5))
    times = draw(st.permutations(list(range(2 * n))))
    ops = []
    for i in range(n):
        a, b = sorted(times[2 * i : 2 * i + 2])
        kind = draw(st.sampled_from(["put", "append", "get"]))
        ret = None if draw(st.integers(0, 4)) == 0 else b
        if kind == "get":
            output = draw(st.sampled_from([None, "a", "b", "ab", "ba"]))
            ops.append(op(kind, a, ret, output=output))
        else:
            ops.append(op(kind, a, ret, draw(st.sampled_from(["a", "b"]))))
    return ops


@settings(max_examples=300, deadline=None)
@given(histories())
def test_checker_agrees_with_brute_force(history: list[Op]) -> None:
    assert check_key(history) == brute_force(history)
