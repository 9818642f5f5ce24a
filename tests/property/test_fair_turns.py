"""Fair turns between the owners of jobs for one model (`policy.turn_for`, `fair_order`),
simulated over the pure rule, and the store's turns checked against the pure ones."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.jobs import Endpoint, JobState, NewJob
from foreman.policy import (
    TURN,
    Candidate,
    Lane,
    LoadCosts,
    ahead_of,
    is_starved,
    pick_next,
    place,
    requeued_turn,
    turn_for,
    turn_step,
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
)
from .test_store_agrees_with_policy import load

NEVER_STARVES = 1e9
KEY = "m:latest"


@attrs.define
class Queue:
    """The queue as the store keeps it, in Python: each job's turn given by `turn_for`
    when it arrives; `owners` maps a job to the API key that made it."""

    jobs: list[Candidate] = attrs.Factory(list)
    owners: dict[str, str] = attrs.Factory(dict)
    ids: Iterator[int] = attrs.Factory(itertools.count)

    def submit(self, owner: str, weight: int, key: str, priority: int, at: float) -> Candidate:
        group = [c for c in self.jobs if c.model_key == key and c.priority == priority]
        front = min((c.turn for c in group), default=None)
        last = max((c.turn for c in group if self.owners[c.id] == owner), default=None)
        job = Candidate(
            f"{next(self.ids):05d}",
            key,
            priority,
            at,
            turn=turn_for(front, last, turn_step(weight)),
        )
        self.jobs.append(job)
        self.owners[job.id] = owner
        return job

    def take(self, resident: str | None, now: float, max_wait: float) -> Candidate | None:
        job = pick_next(self.jobs, resident, now, max_wait)
        if job is not None:
            self.jobs.remove(job)
        return job


WEIGHTS = st.integers(min_value=1, max_value=16)


@given(
    backlog=st.integers(min_value=1, max_value=60),
    ran=st.integers(min_value=0, max_value=60),
    more=st.integers(min_value=0, max_value=30),
    a_weight=WEIGHTS,
    b_weight=WEIGHTS,
)
def test_a_lone_job_of_another_owner_starts_within_the_next_turn(
    backlog, ran, more, a_weight, b_weight
):
    """Owner A queues a backlog for the loaded model, some of it runs, then owner B
    queues one job, and A keeps queuing: at most one of A's jobs starts between B's
    arrival and B's start, whatever the weights."""
    q = Queue()
    for i in range(backlog):
        q.submit("A", a_weight, KEY, 0, float(i))
    for _ in range(min(ran, backlog - 1)):
        q.take(KEY, 100.0, NEVER_STARVES)
    b = q.submit("B", b_weight, KEY, 0, 100.0)
    for i in range(more):
        q.submit("A", a_weight, KEY, 0, 101.0 + i)
    before_b = 0
    while (job := q.take(KEY, 200.0, NEVER_STARVES)) != b:
        assert job is not None
        before_b += 1
    assert before_b <= 1


@given(
    weights=st.lists(WEIGHTS, min_size=2, max_size=4),
    backlog=st.integers(min_value=20, max_value=80),
    data=st.data(),
)
def test_weights_hold_within_one_turn_over_a_long_run(weights, backlog, data):
    """Owners with backlogs for one model, queued in any interleaving: at every point of
    the run, jobs started per unit of weight differ between owners by at most one turn,
    as long as each still has jobs waiting."""
    owners = [f"k{i}" for i in range(len(weights))]
    arrivals = data.draw(st.permutations([o for o in owners for _ in range(backlog)]))
    q = Queue()
    weight_of = dict(zip(owners, weights, strict=True))
    for i, owner in enumerate(arrivals):
        q.submit(owner, weight_of[owner], KEY, 0, float(i // len(owners)))
    served = dict.fromkeys(owners, 0)
    while (job := q.take(KEY, 1000.0, NEVER_STARVES)) is not None:
        served[q.owners[job.id]] += 1
        waiting = {q.owners[c.id] for c in q.jobs}
        shares = [served[o] / weight_of[o] for o in owners if o in waiting]
        if shares:
            assert max(shares) - min(shares) <= 1 + 1e-9


ARRIVALS = st.lists(
    st.tuples(
        st.sampled_from(["A", "B", "C"]),  # owner
        st.sampled_from(["a:latest", "b:latest", KEY]),  # key
        st.sampled_from([0, 0, 0, 1]),  # priority
        st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0]),  # gap since the previous arrival
    ),
    min_size=1,
    max_size=40,
)


def _run(
    arrivals: list[tuple[str, str, int, float]],
    weights: dict[str, int],
    fair: bool,
    max_wait: float,
) -> list[tuple[str, int]]:
    """One upstream running one job per time unit while jobs arrive: the (key, priority)
    of every job in the order started."""
    q = Queue()
    t = 0.0
    pending: list[tuple[float, str, str, int]] = []
    for owner, key, priority, gap in arrivals:
        t += gap
        pending.append((t, owner, key, priority))
    now, resident = 0.0, None
    order: list[tuple[str, int]] = []
    while pending or q.jobs:
        while pending and pending[0][0] <= now:
            at, owner, key, priority = pending.pop(0)
            new = q.submit(owner, weights[owner], key, priority, at)
            if not fair:
                q.jobs[-1] = attrs.evolve(new, turn=0)
        job = q.take(resident, now, max_wait)
        if job is None:
            now = pending[0][0]
            continue
        order.append((job.model_key, job.priority))
        resident = job.model_key
        now += 1.0
    return order


@given(arrivals=ARRIVALS, weights=st.fixed_dictionaries(dict.fromkeys("ABC", WEIGHTS)))
def test_fairness_costs_no_load(arrivals, weights):
    """The same arrivals with turns and without (by age alone): the models run in the
    same order, so the loads are the same in number and kind."""
    # (key, priority) of every start, in order: the loads are the changes of key in it
    assert _run(arrivals, weights, True, NEVER_STARVES) == _run(
        arrivals, weights, False, NEVER_STARVES
    )


@given(cands=CANDIDATE_LISTS, resident=RESIDENTS, now=NOWS, max_wait=MAX_WAITS)
def test_turns_leave_the_starvation_bound_and_priorities_alone(cands, resident, now, max_wait):
    """A starved pick is the same job with turns or without; any pick is at the same
    priority and for the same model."""
    fair = pick_next(cands, resident, now, max_wait)
    unfair = pick_next([attrs.evolve(c, turn=0) for c in cands], resident, now, max_wait)
    if fair is None or unfair is None:
        assert fair is unfair is None
        return
    if is_starved(unfair, now, max_wait):
        assert fair.id == unfair.id
    assert (fair.model_key, fair.priority) == (unfair.model_key, unfair.priority)


@given(
    cands=CANDIDATE_LISTS,
    lane=LANES,
    others=OTHER_LANES,
    now=NOWS,
    max_wait=MAX_WAITS,
    costs=COSTS,
)
def test_across_the_fleet_turns_change_which_job_never_which_key_or_upstream(
    cands, lane, others, now, max_wait, costs
):
    """On any upstream of a fleet, placing with turns takes a job of the same key and
    priority as placing by age alone (or leaves the slot empty in both), and a starved
    job is placed the same."""
    fair = place(cands, lane, others, now, max_wait, costs)
    flat = [attrs.evolve(c, turn=0) for c in cands]
    unfair = place(flat, lane, others, now, max_wait, costs)
    if fair is None or unfair is None:
        assert fair is unfair is None
        return
    assert (fair.model_key, fair.priority) == (unfair.model_key, unfair.priority)
    if is_starved(unfair, now, max_wait):
        assert fair.id == unfair.id


def test_a_lone_job_goes_next_on_a_busy_fleet():
    """Two upstreams hold the model with two slots each; A has 40 jobs queued; B's one
    job is the next one placed after A's front job."""
    q = Queue()
    for i in range(40):
        q.submit("A", 1, KEY, 0, float(i))
    b = q.submit("B", 1, KEY, 0, 50.0)
    here = Lane("gpu0", 2, KEY, running=1)
    there = Lane("gpu1", 2, KEY, running=2)
    first = place(q.jobs, here, (there,), 60.0, NEVER_STARVES, LoadCosts())
    assert first is not None
    assert q.owners[first.id] == "A"
    q.jobs.remove(first)
    assert place(q.jobs, here, (there,), 60.0, NEVER_STARVES, LoadCosts()) == b


def test_turn_steps_are_exact_for_weights_up_to_sixteen():
    for weight in range(1, 17):
        assert turn_step(weight) * weight == TURN


# -- the store gives the same turns ------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SyncStore:
    # one database for the module, emptied by each example; durability is not what these
    # tests are about, so SQLite skips fsync (the test cluster never syncs)
    return open_store(request, request.param, tmp_path_factory.mktemp("turns"), fast=True)


STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("submit"),
            st.sampled_from(["A", "B", None]),
            st.sampled_from([1, 2, 3, 5]),
            st.sampled_from(["a:latest", KEY]),
            st.sampled_from([0, 1]),
        ),
        st.tuples(st.just("claim")),
        st.tuples(st.just("requeue")),
        st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=50)),
    ),
    max_size=40,
)


@given(steps=STEPS)
def test_the_store_gives_the_turns_of_the_pure_rule(store, steps):
    """Submissions of several owners and weights, claims, a running job going back to the
    queue, cancellations: every turn the store writes is the one `turn_for` (on arrival)
    or `requeued_turn` (on going back) gives from the queue as it stood."""
    with store.conn:
        store.conn.execute("DELETE FROM jobs")
    turns: dict[str, int] = {}
    running: list[str] = []

    def queued() -> list[tuple[str, str, int, str | None, int]]:
        rows: list[tuple[str, str, int, str | None, int]] = store.conn.execute(
            "SELECT id, model_key, priority, key_name, turn FROM jobs WHERE state = 'queued'"
        ).fetchall()
        return rows

    for step in steps:
        if step[0] == "submit":
            _, owner, weight, key, priority = step
            group = [r for r in queued() if r[1] == key and r[2] == priority]
            front = min((r[4] for r in group), default=None)
            last = max((r[4] for r in group if r[3] == owner), default=None)
            job = store.enqueue(
                NewJob(
                    Endpoint.CHAT, key, key, b"{}", False, priority, key_name=owner, weight=weight
                )
            )
            assert job.turn == turn_for(front, last, turn_step(weight))
            turns[job.id] = job.turn
        elif step[0] == "claim":
            job = store.claim(None, NEVER_STARVES)
            if job is not None:
                running.append(job.id)
        elif step[0] == "requeue" and running:
            job_id = running.pop(0)
            was = store.get(job_id)
            assert was is not None
            group = [r for r in queued() if r[1] == was.model_key and r[2] == was.priority]
            front = min((r[4] for r in group), default=None)
            back = store.transition(job_id, was.state, JobState.QUEUED)
            assert back is not None
            assert back.turn == requeued_turn(was.turn, front)
        elif step[0] == "cancel":
            rows = queued()
            if rows:
                job_id = rows[step[1] % len(rows)][0]
                store.transition(job_id, JobState.QUEUED, JobState.CANCELLED)


def test_the_oldest_job_chooses_the_model_and_the_turn_chooses_its_job(store):
    """An idle upstream swaps to the model of the oldest job at the top priority, as
    without turns, and runs that model's first job in turn, which may be a younger one."""
    old_late_turn = Candidate("a-old", "a:latest", 0, 1.0, turn=5)
    young_first_turn = Candidate("a-young", "a:latest", 0, 3.0, turn=0)
    middle = Candidate("b-mid", "b:latest", 0, 2.0, turn=0)
    cands = [old_late_turn, young_first_turn, middle]
    load(store, [(c, JobState.QUEUED) for c in cands])
    lane = Lane("gpu0", 1, None)
    for rule in (
        lambda: place(cands, lane, (), 10.0, NEVER_STARVES, LoadCosts()),
        lambda: store.place(lane, (), 10.0, NEVER_STARVES, LoadCosts()),
        lambda: pick_next(cands, None, 10.0, NEVER_STARVES),
        lambda: store.pick(None, 10.0, NEVER_STARVES),
    ):
        assert rule() == young_first_turn
    # the starvation bound goes by age alone
    assert place(cands, lane, (), 10.0, 8.5, LoadCosts()) == old_late_turn
    assert store.place(lane, (), 10.0, 8.5, LoadCosts()) == old_late_turn


@given(rows=ROWS)
def test_the_store_counts_the_jobs_ahead_as_the_pure_rule_does(store, rows):
    load(store, rows)
    queued = [c for c, state in rows if state is JobState.QUEUED]
    for c in queued:
        job = store.get(c.id)
        assert job is not None
        assert store.ahead_in_key(job) == ahead_of(queued, c)
