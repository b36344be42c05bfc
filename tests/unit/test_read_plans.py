"""store.gather: several reads written as plans share their round trips, and each gets back
exactly the rows of its own queries (the dashboard's site-wide pages read a dozen this way)."""

from __future__ import annotations

from typing import Any

from ralph_monitor.store import Plan, gather


def one_round(tag: str) -> Plan[str]:
    (rows,) = yield [(f"{tag}.q", None)]
    return f"{tag}:{rows}"


def two_rounds(tag: str) -> Plan[str]:
    first, second = yield [(f"{tag}.q1", {"n": 1}), (f"{tag}.q2", None)]
    (third,) = yield [(f"{tag}.q3", {"after": first + second})]
    return f"{tag}:{third}"


def no_round() -> Plan[str]:
    return "nothing to read"
    yield []  # a generator all the same


def answer(requests: Any) -> list[list[Any]]:
    """What a store would send back: each query's rows name the query."""
    return [[name] for name, *_ in requests]


def test_gather_sends_every_plans_next_queries_in_one_round_and_routes_the_rows_back() -> None:
    plan = gather([one_round("a"), two_rounds("b"), no_round(), one_round("c")])
    rounds = []
    rows = None
    try:
        while True:
            requests = plan.send(rows)  # type: ignore[arg-type]
            rounds.append([name for name, *_ in requests])
            rows = answer(requests)
    except StopIteration as done:
        results = done.value
    assert rounds == [["a.q", "b.q1", "b.q2", "c.q"], ["b.q3"]]
    assert results == ["a:['a.q']", "b:['b.q3']", "nothing to read", "c:['c.q']"]


def test_gathers_nest_and_their_rounds_add_up_to_the_longest() -> None:
    plan = gather([gather([two_rounds("x"), one_round("y")]), two_rounds("z")])
    rounds = []
    rows = None
    try:
        while True:
            requests = plan.send(rows)  # type: ignore[arg-type]
            rounds.append(len(requests))
            rows = answer(requests)
    except StopIteration as done:
        results = done.value
    assert rounds == [5, 2]
    assert results == [["x:['x.q3']", "y:['y.q']"], "z:['z.q3']"]
