"""The fleet's placement rule (`policy.place`): its invariants, its agreement with the
single-upstream rule, and the store's indexed twin (`SyncStore.place`) on a real file."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from foreman.jobs import JobState
from foreman.policy import (
    BACKLOG_CAP,
    Candidate,
    Lane,
    LoadCosts,
    is_starved,
    model_of,
    pick_next,
    place,
    rank,
)
from foreman.store import SyncStore
from tests.pg.backends import BACKENDS, open_store

from ._strategies import (
    CANDIDATE_LISTS,
    COSTS,
    LANES,
    MAX_WAITS,
    NOWS,
    OTHER_LANES,
    RESIDENTS,
    ROWS,
    SERVES,
)
from .test_store_agrees_with_policy import load


@pytest.fixture(scope="module", params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SyncStore:
    # one database for the module, emptied by each example; durability is not what these
    # tests are about, so SQLite skips fsync (the test cluster never syncs)
    return open_store(request, request.param, tmp_path_factory.mktemp("place"), fast=True)


def _runnable(cands: list[Candidate], serves: frozenset[str], now: float) -> list[Candidate]:
    return [c for c in cands if c.not_before <= now and model_of(c.model_key) in serves]


@given(cands=CANDIDATE_LISTS, resident=RESIDENTS, now=NOWS, max_wait=MAX_WAITS, costs=COSTS)
def test_one_idle_upstream_of_one_slot_places_as_the_single_rule_picks(
    cands, resident, now, max_wait, costs
):
    """With one upstream foreman behaves exactly as before the fleet."""
    lane = Lane("only", 1, resident, 0)
    got = place(cands, lane, (), now, max_wait, costs)
    assert got == pick_next(cands, resident, now, max_wait)


@given(
    cands=CANDIDATE_LISTS,
    lane=LANES,
    others=OTHER_LANES,
    serves=SERVES,
    now=NOWS,
    max_wait=MAX_WAITS,
    costs=COSTS,
)
def test_placement_invariants(cands, lane, others, serves, now, max_wait, costs):
    lane = attrs.evolve(lane, serves=serves.__contains__)
    got = place(cands, lane, others, now, max_wait, costs)
    runnable = _runnable(cands, serves, now)
    if got is None:
        event("leave the slot empty")
    else:
        event("own key" if got.model_key == lane.resident else "load")
        # never on an upstream that cannot serve the model, and never before its backoff
        assert got in runnable
        # never more than `slots`, never a second job while a load is under way
        assert lane.free
        # never two keys at once: a busy upstream takes only its own key
        if lane.running > 0:
            assert got.model_key == lane.resident
        # a load that would evict a model is left to an empty upstream that can take it;
        # each empty upstream takes one key, so a load here means another key is waiting
        # that an empty upstream took instead
        if got.model_key != lane.resident and lane.resident is not None:
            takers = [o for o in others if o.empty and o.serves(model_of(got.model_key))]
            if takers:
                left = {c.model_key for c in runnable} - {got.model_key, lane.resident}
                assert left
    if not lane.free:
        return
    covered = {o.resident for o in others} - {lane.resident, None}
    starved = [c for c in runnable if is_starved(c, now, max_wait) and c.model_key not in covered]
    if starved:
        # the starvation bound first: the most urgent starved job, or (busy with another
        # key, or leaving the load to an empty upstream) nothing
        first = min(starved, key=rank)
        left_to_empty = lane.resident is not None and any(
            o.empty and o.serves(model_of(first.model_key)) for o in others
        )
        assert got == first or (got is None and lane.running > 0) or left_to_empty
        return
    mine = [c for c in runnable if c.model_key == lane.resident]
    if mine and lane.running == 0:
        # an idle upstream never stays idle while a job it can run without a swap waits
        assert got is not None
    if got is not None and got.model_key != lane.resident and mine:
        # a swap away from work of its own key happens only for a higher priority
        assert got.priority > max(c.priority for c in mine)


@given(
    cands=CANDIDATE_LISTS,
    lane=LANES,
    others=OTHER_LANES,
    serves=SERVES,
    now=NOWS,
    max_wait=MAX_WAITS,
    costs=COSTS,
)
def test_a_free_slot_with_work_for_its_loaded_key_at_the_top_never_swaps(
    cands, lane, others, serves, now, max_wait, costs
):
    lane = attrs.evolve(lane, serves=serves.__contains__)
    got = place(cands, lane, others, now, max_wait, costs)
    runnable = _runnable(cands, serves, now)
    covered = {o.resident for o in others} - {lane.resident, None}
    open_ = [c for c in runnable if c.model_key not in covered]
    if not lane.free or not open_ or any(is_starved(c, now, max_wait) for c in open_):
        return
    top = max(c.priority for c in open_)
    if any(c.model_key == lane.resident and c.priority == top for c in open_):
        assert got is not None
        assert got.model_key == lane.resident


@given(
    rows=ROWS,
    data=st.data(),
    lane=LANES,
    others=OTHER_LANES,
    serves=SERVES,
    now=NOWS,
    max_wait=MAX_WAITS,
    costs=COSTS,
)
def test_store_place_equals_pure_rule(
    store, rows, data, lane, others, serves, now, max_wait, costs
):
    keys = [c.model_key for c, _ in rows]
    lane = attrs.evolve(lane, serves=serves.__contains__)
    if keys and data.draw(st.booleans()):
        # often the lane holds a key with queued work
        lane = attrs.evolve(lane, resident=data.draw(st.sampled_from(keys)), loading=False)
    load(store, rows)
    queued = [c for c, state in rows if state is JobState.QUEUED]

    expected = place(queued, lane, others, now, max_wait, costs)
    got = store.place(lane, others, now, max_wait, costs)

    assert got == expected


def test_an_idle_upstream_loads_a_key_loaded_nowhere_before_a_second_copy(store):
    a = [Candidate(f"a{i}", "a:latest", 0, float(i)) for i in range(50)]
    b = Candidate("b0", "b:latest", 0, 60.0)
    others = (Lane("gpu1", 1, "a:latest", 1),)
    cheap = LoadCosts({"a:latest": 1.0}, {"a:latest": 1.0})
    lane = Lane("here", 1, None)
    assert place([*a, b], lane, others, 100.0, 1e9, cheap) == b
    load(store, [(c, JobState.QUEUED) for c in [*a, b]])
    assert store.place(lane, others, 100.0, 1e9, cheap) == b


def test_a_second_copy_only_when_the_backlog_is_worth_a_load(store):
    lane = Lane("here", 1, None)
    others = (Lane("gpu1", 2, "a:latest", 2),)
    # 10 jobs of 1 s over 2 slots drain in 5 s: worth a 2 s load, not a 30 s one
    a = [Candidate(f"a{i}", "a:latest", 0, float(i)) for i in range(10)]
    load(store, [(c, JobState.QUEUED) for c in a])
    quick = LoadCosts({"a:latest": 2.0}, {"a:latest": 1.0})
    slow = LoadCosts({"a:latest": 30.0}, {"a:latest": 1.0})
    for costs, expected in ((quick, a[0]), (slow, None)):
        assert place(a, lane, others, 100.0, 1e9, costs) == expected
        assert store.place(lane, others, 100.0, 1e9, costs) == expected


def test_backlogs_are_counted_up_to_the_cap(store):
    """The store's count stops at the cap, so choosing a copy never walks a long queue;
    two keys beyond it are ranked by their best job instead."""
    big = [Candidate(f"x{i:04}", "a:latest", 0, 10.0 + i) for i in range(BACKLOG_CAP + 5)]
    bigger = [Candidate(f"y{i:04}", "b:latest", 0, 5.0 + i) for i in range(BACKLOG_CAP + 50)]
    others = (Lane("gpu1", 1, "a:latest", 1), Lane("gpu2", 1, "b:latest", 1))
    lane = Lane("here", 1, None)
    load(store, [(c, JobState.QUEUED) for c in [*big, *bigger]])
    costs = LoadCosts({}, {})
    expected = bigger[0]
    assert place([*big, *bigger], lane, others, 1e4, 1e9, costs) == expected
    assert store.place(lane, others, 1e4, 1e9, costs) == expected


def test_a_load_is_left_to_an_empty_upstream_that_serves_the_model(store):
    """gpu1 is empty: loading b there evicts nothing, and a stays loaded here for its
    next job. An empty upstream that cannot serve b changes nothing."""
    b = Candidate("b0", "b:latest", 0, 1.0)
    here = Lane("here", 1, "a:latest")
    empty = Lane("gpu1", 1, None)
    elsewhere_only = Lane("gpu1", 1, None, serves=lambda model: model != "b:latest")
    load(store, [(b, JobState.QUEUED)])
    for others, expected in (((empty,), None), ((elsewhere_only,), b), ((), b)):
        assert place([b], here, others, 10.0, 1e9, LoadCosts()) == expected
        assert store.place(here, others, 10.0, 1e9, LoadCosts()) == expected
    # the empty upstream itself takes it
    assert place([b], empty, (here,), 10.0, 1e9, LoadCosts()) == b
    # with work of its own (even of a lower priority), the holder goes on with it
    mine = Candidate("a0", "a:latest", -1, 2.0)
    load(store, [(b, JobState.QUEUED), (mine, JobState.QUEUED)])
    assert place([b, mine], here, (empty,), 10.0, 1e9, LoadCosts()) == mine
    assert store.place(here, (empty,), 10.0, 1e9, LoadCosts()) == mine
