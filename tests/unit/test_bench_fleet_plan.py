"""The fleet benchmark's routers and lower bound (scripts/bench/fleet_plan.py)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scripts.bench.fleet_plan import (
    RouteState,
    answered,
    loaded_first,
    lower_bound,
    round_robin,
    sent,
)


def test_round_robin_cycles_through_the_upstreams() -> None:
    assert [round_robin(i, 3) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_loaded_first_prefers_an_upstream_holding_the_model_even_when_busier() -> None:
    states = (RouteState("a", 0), RouteState("b", 5), RouteState(None, 0))
    assert loaded_first("b", states) == 1


def test_loaded_first_takes_the_least_busy_holder() -> None:
    states = (RouteState("a", 4), RouteState("b", 0), RouteState("a", 2))
    assert loaded_first("a", states) == 2


def test_loaded_first_sends_a_model_loaded_nowhere_to_the_least_busy() -> None:
    states = (RouteState("a", 3), RouteState("b", 1), RouteState("c", 2))
    assert loaded_first("d", states) == 1


def test_loaded_first_breaks_ties_by_order() -> None:
    assert loaded_first("a", (RouteState(), RouteState(), RouteState())) == 0
    assert loaded_first("a", (RouteState("b", 1), RouteState("a", 1), RouteState("a", 1))) == 1


def test_loaded_first_needs_an_upstream() -> None:
    with pytest.raises(ValueError, match="no upstream"):
        loaded_first("a", ())


def test_the_routers_view_follows_what_was_sent_and_answered() -> None:
    states: tuple[RouteState, ...] = (RouteState(), RouteState())
    states = sent(states, 1, "a")
    states = sent(states, 1, "b")
    assert states == (RouteState(), RouteState("b", 2))
    # the model stays loaded once its requests are answered
    states = answered(answered(states, 1), 1)
    assert states == (RouteState(), RouteState("b", 0))


def test_a_burst_of_one_model_on_one_upstream_routes_to_it_while_others_idle() -> None:
    """Loaded-first's weakness the benchmark shows: a loaded model pulls all its work."""
    states: tuple[RouteState, ...] = (RouteState(), RouteState(), RouteState())
    chosen = []
    for model in ["a", "a", "a", "a"]:
        index = loaded_first(model, states)
        chosen.append(index)
        states = sent(states, index, model)
    assert chosen == [0, 0, 0, 0]


def test_lower_bound_of_a_burst_is_the_perfect_split() -> None:
    # 6 models, 3 upstreams: 6 loads of 2 s, 300 jobs of 0.1 s -> (30 + 12) / 3
    models = [f"m{i % 6}" for i in range(300)]
    bound = lower_bound([0.0] * 300, models, generation=0.1, load=2.0, upstreams=3)
    assert bound.loads == 6
    assert bound.makespan_s == pytest.approx(14.0)
    assert bound.work_split_s == pytest.approx(14.0)


def test_every_upstream_that_works_needs_a_load() -> None:
    # one model on three upstreams: splitting it three ways costs three loads
    bound = lower_bound([0.0] * 30, ["a"] * 30, generation=1.0, load=3.0, upstreams=3)
    assert bound.loads == 3
    assert bound.makespan_s == pytest.approx((30 * 1.0 + 3 * 3.0) / 3)


def test_lower_bound_with_arrivals_waits_for_the_last_one() -> None:
    bound = lower_bound([0.0, 1.0, 60.0], ["a", "b", "a"], 0.5, 2.0, upstreams=3)
    assert bound.makespan_s == pytest.approx(60.5)
    assert bound.last_arrival_s == pytest.approx(60.5)


def test_a_lone_job_needs_its_load() -> None:
    bound = lower_bound([0.0], ["a"], generation=0.5, load=2.0, upstreams=3)
    assert bound.loads == 1
    assert bound.makespan_s == pytest.approx(2.5)


def test_lower_bound_checks_its_input() -> None:
    assert lower_bound([], [], 1.0, 1.0, 3).makespan_s == 0
    with pytest.raises(ValueError, match="one arrival"):
        lower_bound([0.0], [], 1.0, 1.0, 3)
    with pytest.raises(ValueError, match="at least one upstream"):
        lower_bound([0.0], ["a"], 1.0, 1.0, 0)


def optimal_burst_makespan(models: list[str], generation: float, load: float, n: int) -> float:
    """Every split of a burst over `n` one-slot upstreams, each draining by model."""
    best = float("inf")
    for split in itertools.product(range(n), repeat=len(models)):
        spans = []
        for upstream in range(n):
            mine = [m for m, u in zip(models, split, strict=True) if u == upstream]
            spans.append(len(set(mine)) * load + len(mine) * generation)
        best = min(best, max(spans))
    return best


@given(
    models=st.lists(st.sampled_from("abcd"), min_size=1, max_size=6),
    generation=st.floats(0.1, 3.0),
    load=st.floats(0.0, 5.0),
    upstreams=st.integers(1, 3),
)
def test_no_schedule_of_a_burst_beats_the_lower_bound(
    models: list[str], generation: float, load: float, upstreams: int
) -> None:
    bound = lower_bound([0.0] * len(models), models, generation, load, upstreams)
    best = optimal_burst_makespan(models, generation, load, upstreams)
    assert bound.makespan_s <= best + 1e-9


def test_the_bound_is_reached_when_the_work_splits_evenly() -> None:
    models = ["a", "a", "b", "b", "c", "c"]
    bound = lower_bound([0.0] * 6, models, generation=1.0, load=2.0, upstreams=3)
    assert bound.makespan_s == pytest.approx(optimal_burst_makespan(models, 1.0, 2.0, 3))
