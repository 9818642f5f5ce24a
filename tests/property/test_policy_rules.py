"""The scheduling rule (`foreman.policy.pick_next`), each invariant stated on its own."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import attrs
from hypothesis import given
from hypothesis import strategies as st

from foreman.policy import Candidate, age_order, fair_order, is_starved, pick_next

from ._strategies import CANDIDATE_LISTS, MAX_WAITS, MODEL_KEYS, NOWS, PRIORITIES, RESIDENTS

NEVER_STARVES = 1e9


def runnable(cands: Sequence[Candidate], now: float) -> list[Candidate]:
    return [c for c in cands if c.not_before <= now]


def starved(cands: Sequence[Candidate], now: float, max_wait: float) -> list[Candidate]:
    return [c for c in runnable(cands, now) if is_starved(c, now, max_wait)]


def swaps(resident: str | None, order: Sequence[str]) -> int:
    """Model loads needed to run `order` starting with `resident` loaded (None: nothing)."""
    count = 0
    for key in order:
        if key != resident:
            count += 1
            resident = key
    return count


def drain(
    cands: Sequence[Candidate], resident: str | None, now: float, max_wait: float
) -> list[Candidate]:
    """The worker loop with nothing arriving: pick, load its model, run it, repeat."""
    left = list(cands)
    out = []
    while (picked := pick_next(left, resident, now, max_wait)) is not None:
        out.append(picked)
        resident = picked.model_key
        left.remove(picked)
    return out


@given(CANDIDATE_LISTS, RESIDENTS, NOWS, MAX_WAITS)
def test_a_job_in_backoff_is_never_picked(cands, resident, now, max_wait):
    picked = pick_next(cands, resident, now, max_wait)
    if runnable(cands, now):
        assert picked is not None
        assert picked in cands
        assert picked.not_before <= now
    else:
        assert picked is None


@given(CANDIDATE_LISTS, RESIDENTS, NOWS, MAX_WAITS)
def test_a_starved_job_goes_first_highest_priority_then_oldest(cands, resident, now, max_wait):
    hungry = starved(cands, now, max_wait)
    picked = pick_next(cands, resident, now, max_wait)
    if hungry:
        assert picked is not None
        assert is_starved(picked, now, max_wait)
        top = max(c.priority for c in hungry)
        assert picked.priority == top
        assert picked == min((c for c in hungry if c.priority == top), key=age_order)


@given(CANDIDATE_LISTS, RESIDENTS, NOWS, MAX_WAITS)
def test_highest_priority_runs_first_when_nothing_is_starved(cands, resident, now, max_wait):
    picked = pick_next(cands, resident, now, max_wait)
    if picked is not None and not starved(cands, now, max_wait):
        assert picked.priority == max(c.priority for c in runnable(cands, now))


@given(CANDIDATE_LISTS, RESIDENTS, NOWS, MAX_WAITS)
def test_swap_waits_for_resident_model_jobs_at_the_top_priority(cands, resident, now, max_wait):
    """Leaving the resident model means it has nothing runnable at the top priority,
    unless the starvation bound made the pick."""
    picked = pick_next(cands, resident, now, max_wait)
    if picked is None or resident is None or picked.model_key == resident:
        return
    if is_starved(picked, now, max_wait):
        return
    top = max(c.priority for c in runnable(cands, now))
    assert picked.priority == top
    assert not [c for c in runnable(cands, now) if c.model_key == resident and c.priority == top]


@given(CANDIDATE_LISTS, RESIDENTS, NOWS, MAX_WAITS)
def test_in_turn_within_model_and_priority(cands, resident, now, max_wait):
    """The pick is the runnable job of its (model, priority) group whose turn comes first
    (by turn, then oldest); a pick made by the starvation bound is instead the oldest
    starved job of its priority, whatever its model or turn: turns never override the
    starvation bound."""
    picked = pick_next(cands, resident, now, max_wait)
    if picked is None:
        return
    if starved(cands, now, max_wait):
        same_priority = [c for c in starved(cands, now, max_wait) if c.priority == picked.priority]
        assert picked == min(same_priority, key=age_order)
        return
    group = [
        c
        for c in runnable(cands, now)
        if c.model_key == picked.model_key and c.priority == picked.priority
    ]
    assert picked == min(group, key=fair_order)


@given(CANDIDATE_LISTS, RESIDENTS, NOWS, MAX_WAITS)
def test_turns_change_which_job_of_a_model_runs_never_which_model(cands, resident, now, max_wait):
    """The same queue with every turn set to 0 (the order by age alone) picks a job of
    the same model and priority: fairness reorders only jobs that would run on the same
    loaded model anyway."""
    picked = pick_next(cands, resident, now, max_wait)
    unfair = pick_next([attrs.evolve(c, turn=0) for c in cands], resident, now, max_wait)
    assert (picked is None) == (unfair is None)
    if picked is not None and unfair is not None:
        assert (picked.model_key, picked.priority) == (unfair.model_key, unfair.priority)


@given(st.data(), CANDIDATE_LISTS, RESIDENTS, NOWS, MAX_WAITS)
def test_pick_does_not_depend_on_candidate_order(data, cands, resident, now, max_wait):
    shuffled = data.draw(st.permutations(cands))
    assert pick_next(shuffled, resident, now, max_wait) == pick_next(cands, resident, now, max_wait)
    assert pick_next(iter(cands), resident, now, max_wait) == pick_next(
        cands, resident, now, max_wait
    )


@given(
    arrivals=st.lists(st.sampled_from(MODEL_KEYS), min_size=1, max_size=25),
    gaps=st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=25, max_size=25),
    priority=PRIORITIES,
    resident=RESIDENTS,
)
def test_draining_a_batch_loads_each_model_once(arrivals, gaps, priority, resident):
    """A batch queued before the worker starts, at one priority, nothing starving: the
    number of loads is the number of distinct models, minus one when the model already
    resident is among them; each model's jobs run together and in arrival order,
    the resident's first, then the others by their first arrival."""
    t = 0.0
    cands = []
    for i, (key, gap) in enumerate(zip(arrivals, gaps, strict=False)):
        t += gap
        cands.append(Candidate(f"{i:04d}", key, priority, t))
    order = drain(cands, resident, now=t + 1, max_wait=NEVER_STARVES)

    distinct = set(arrivals)
    assert swaps(resident, [c.model_key for c in order]) == len(distinct) - (
        1 if resident in distinct else 0
    )
    models_by_first_arrival = list(dict.fromkeys(arrivals))
    if resident in distinct:
        models_by_first_arrival.remove(resident)
        models_by_first_arrival.insert(0, resident)
    expected = [c for key in models_by_first_arrival for c in cands if c.model_key == key]
    assert order == expected


@given(CANDIDATE_LISTS, RESIDENTS, NOWS, MAX_WAITS)
def test_draining_runs_every_runnable_job_exactly_once(cands, resident, now, max_wait):
    order = drain(cands, resident, now, max_wait)
    assert sorted(c.id for c in order) == sorted(c.id for c in runnable(cands, now))


def test_acceptance_arrivals_drain_by_model_with_two_swaps():
    arrivals = ["B", "A", "B", "A", "C", "B", "A"]
    cands = [Candidate(f"job{i}", key, 0, float(i)) for i, key in enumerate(arrivals)]

    order = [c.model_key for c in drain(cands, "A", now=10.0, max_wait=600.0)]

    assert order == ["A", "A", "A", "B", "B", "B", "C"]
    assert swaps("A", order) == 2
    # first come, first served changes model between six of its neighbours, and needs a
    # seventh load for its first job, since A (not B) is resident
    fcfs_changes = sum(1 for x, y in itertools.pairwise(arrivals) if x != y)
    assert fcfs_changes == 6
    assert swaps("A", arrivals) == 7


def test_starved_job_of_another_model_overtakes_the_resident():
    old = Candidate("old", "B", 0, enqueued_at=0.0)
    mine = Candidate("mine", "A", 0, enqueued_at=50.0)
    assert pick_next([old, mine], "A", now=100.0, max_wait=120.0) == mine
    assert pick_next([old, mine], "A", now=100.0, max_wait=99.0) == old


def test_a_job_exactly_max_wait_old_is_not_starved():
    edge = Candidate("edge", "B", 0, enqueued_at=0.0)
    mine = Candidate("mine", "A", 0, enqueued_at=5.0)
    assert pick_next([edge, mine], "A", now=10.0, max_wait=10.0) == mine


def test_jobs_enqueued_at_the_same_instant_run_in_id_order():
    later_id = Candidate("01B", "A", 0, enqueued_at=5.0)
    earlier_id = Candidate("01A", "A", 0, enqueued_at=5.0)
    for order in ([later_id, earlier_id], [earlier_id, later_id]):
        assert pick_next(order, "A", now=6.0, max_wait=600.0) == earlier_id
        assert pick_next(order, None, now=6.0, max_wait=600.0) == earlier_id
        assert pick_next(order, None, now=900.0, max_wait=600.0) == earlier_id
