"""The scheduling rule: which runnable job runs next. Pure, so it can be property-tested.

The store's claim query implements the same rule with indexed lookups; a property test
checks that the two agree. The rule, in order:

1. Starvation bound: a runnable job that has waited longer than `max_wait` goes first
   (the highest priority, then the oldest, of those).
2. Otherwise the highest priority first; within it, jobs for the resident model first.
3. When the resident model has nothing left at the top priority, switch to the model of
   the oldest job of the top priority.

Which of a model's jobs at one priority goes first is decided by turns (`fair_order`):
each job carries a turn given when it was queued (`turn_for`), so that the owners (API
keys) with jobs for one model take turns, each in proportion to its weight, and one
owner's jobs stay oldest first. Turns only reorder jobs of one model and one priority:
which model runs, when a swap happens, the starvation bound and priorities are decided
exactly as without them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs


@attrs.frozen
class Candidate:
    """The scheduling-relevant view of a queued job."""

    id: str
    model_key: str
    priority: int
    enqueued_at: float
    not_before: float = 0.0
    # its place among the queued jobs of its model and priority (see `turn_for`)
    turn: int = 0


# -- turns: fair shares between the owners of jobs for one model -------------------------

# one turn of an owner of weight 1; an owner of weight w advances by TURN // w per job,
# so it gets w jobs for each job of an owner of weight 1 (whole numbers: the store and
# this module compare the same integers, never rounded floats)
TURN = 720_720  # divisible by every weight from 1 to 16
MAX_WEIGHT = 1000


def turn_step(weight: int) -> int:
    """How far one job moves its owner's turn along: less for a heavier owner."""
    return max(1, TURN // max(1, weight))


def turn_for(front: int | None, owners_last: int | None, step: int) -> int:
    """The turn of a job queued now for a model and priority.

    `front` is the smallest turn among that model's queued jobs at that priority (None
    when there are none); `owners_last` the largest turn among those of the same owner
    (None when the owner has none queued there). An owner with jobs waiting queues behind
    its own last one, one step further; an owner with none waiting joins at the front,
    behind the job there (ties go to the older job). So a backlog of one owner never holds
    back another owner's next job by more than one turn, and an owner that went idle
    starts again at the front, without credit saved up while it was idle (start-time
    fair queueing, with a job as the unit of work).
    """
    if owners_last is not None:
        return owners_last + step
    return front if front is not None else 0


def requeued_turn(turn: int, front: int | None) -> int:
    """The turn of a job that goes back to the queue (a retry, an outage, a restart): it
    had its turn already, so it rejoins at the front, never ahead of it (a turn below the
    front would let every newcomer in ahead of the jobs waiting there)."""
    return turn if front is None else max(turn, front)


def fair_order(c: Candidate) -> tuple[int, float, str]:
    """Among jobs of one model and one priority: by turn, then oldest first."""
    return (c.turn, c.enqueued_at, c.id)


def first_in_turn(candidates: Iterable[Candidate], key: str, priority: int) -> Candidate:
    """The job of `key` at `priority` whose turn comes first (one must exist)."""
    return min(
        (c for c in candidates if c.model_key == key and c.priority == priority),
        key=fair_order,
    )


def ahead_of(candidates: Iterable[Candidate], job: Candidate) -> int:
    """How many queued jobs of `job`'s key run before it in the key's order: those of a
    higher priority, and those of its priority whose turn comes first (then older).
    Its store twin is `SyncStore.ahead_in_key`."""
    return sum(
        1
        for c in candidates
        if c.model_key == job.model_key
        and (
            c.priority > job.priority
            or (c.priority == job.priority and fair_order(c) < fair_order(job))
        )
    )


def age_order(c: Candidate) -> tuple[float, str]:
    """Oldest first; the id breaks ties so the order is total and deterministic."""
    return (c.enqueued_at, c.id)


def rank(c: Candidate) -> tuple[int, float, str]:
    return (-c.priority, c.enqueued_at, c.id)


def is_starved(c: Candidate, now: float, max_wait: float) -> bool:
    """Waited longer than `max_wait` (written as the store's SQL compares it)."""
    return c.enqueued_at < now - max_wait


def pick_next(
    candidates: Iterable[Candidate],
    resident: str | None,
    now: float,
    max_wait: float,
) -> Candidate | None:
    """The job to run next, or None when nothing is runnable at `now`."""
    runnable = [c for c in candidates if c.not_before <= now]
    if not runnable:
        return None
    starved = [c for c in runnable if is_starved(c, now, max_wait)]
    if starved:
        return min(starved, key=rank)
    top = max(c.priority for c in runnable)
    at_top = [c for c in runnable if c.priority == top]
    if resident is not None and any(c.model_key == resident for c in at_top):
        return first_in_turn(at_top, resident, top)
    return first_in_turn(at_top, min(at_top, key=age_order).model_key, top)


# -- the fleet: which job a free slot on one upstream takes ------------------------------

# backlogs are counted up to this many jobs per key (the store's count stops there, so
# choosing a second copy never walks a long queue)
BACKLOG_CAP = 500
# a second copy of a model is loaded only when the backlog would keep the upstreams that
# hold it busy for this many times its load time (see `LoadCosts.worth_second_copy`)
SECOND_COPY_MARGIN = 2.0
# until foreman has measured a model: what a load and a job are assumed to take
DEFAULT_LOAD_SECONDS = 10.0
DEFAULT_JOB_SECONDS = 5.0


@attrs.frozen
class Lane:
    """One healthy upstream as the placement rule sees it."""

    name: str
    slots: int
    # the chat residency key it holds or is loading (None: none, or unknown)
    resident: str | None
    # jobs in flight on it (a load counts)
    running: int = 0
    # a load is under way: it takes nothing more until the model is in
    loading: bool = False
    # whether a job for a model (by name) may run on it
    serves: Callable[[str], bool] = attrs.field(default=lambda _: True, eq=False, repr=False)

    @property
    def free(self) -> bool:
        return not self.loading and self.running < self.slots

    @property
    def empty(self) -> bool:
        """Idle with no model loaded: a load there evicts nothing."""
        return self.resident is None and self.running == 0 and not self.loading


@attrs.frozen
class LoadCosts:
    """What foreman measured of each residency key: how long a load takes and how long
    one of its jobs runs (medians over recent history; see `SyncStore.measured_costs`)."""

    load_seconds: Mapping[str, float] = attrs.field(factory=dict)
    job_seconds: Mapping[str, float] = attrs.field(factory=dict)

    def load(self, key: str) -> float:
        return self.load_seconds.get(key, DEFAULT_LOAD_SECONDS)

    def job(self, key: str) -> float:
        return self.job_seconds.get(key, DEFAULT_JOB_SECONDS)

    def worth_second_copy(self, key: str, backlog: int, holding_slots: int) -> bool:
        """Whether an idle upstream should load another copy of `key`.

        The upstreams holding `key` would take backlog x job time / their slots to drain
        it. A copy elsewhere first spends a load, then drains alongside them: it finishes
        the backlog sooner whenever the drain outlasts the load. The margin keeps the copy
        for backlogs clearly worth the load (it evicts the idle upstream's model, and the
        measurements are medians, not promises)."""
        drain = backlog * self.job(key) / max(1, holding_slots)
        return drain > SECOND_COPY_MARGIN * self.load(key)


def model_of(key: str) -> str:
    """The model name of a residency key (the part before its runner options)."""
    return key.partition(" ")[0]


def covered_keys(lane: Lane, others: Sequence[Lane]) -> set[str]:
    """The keys other upstreams hold and `lane` does not: their jobs are theirs to drain."""
    return {o.resident for o in others if o.resident is not None} - {lane.resident}


def leaving_loads_to_empty(
    lane: Lane, others: Sequence[Lane], choose: Callable[[frozenset[str]], Candidate | None]
) -> Candidate | None:
    """`choose(also_covered)` (a placement), with one refinement: a lane that holds a
    model leaves a load to an empty upstream (idle, nothing loaded) that serves the key,
    since a load there evicts nothing and this lane's model stays for its next job. The
    key then counts as covered and the lane chooses again (its own key's work, say); each
    empty upstream takes one key."""
    empties = [o for o in others if o.empty]
    also: set[str] = set()
    while True:
        chosen = choose(frozenset(also))
        if chosen is None or lane.resident is None or chosen.model_key == lane.resident:
            return chosen
        name = model_of(chosen.model_key)
        taker = next((o for o in empties if o.serves(name)), None)
        if taker is None:
            return chosen
        empties.remove(taker)
        also.add(chosen.model_key)


def place(
    candidates: Iterable[Candidate],
    lane: Lane,
    others: Sequence[Lane],
    now: float,
    max_wait: float,
    costs: LoadCosts,
) -> Candidate | None:
    """The job a free slot on `lane` takes next, or None to leave the slot empty.

    `others` are the other healthy upstreams; a lane's `serves(model)` says whether a job
    for that model may run there. A key another upstream holds is "covered": its jobs are left to
    that upstream (it drains them without a swap), unless this lane holds it too.

    1. Starvation bound: the highest-priority, then oldest, job that waited past
       `max_wait` and is not covered elsewhere. A lane already running another key takes
       nothing more (it drains, then loads the starved job's key).
    2. Otherwise, among uncovered jobs, the top priority: this lane's own key first (drain
       by model), else, on an idle lane, the oldest job of that priority (a swap). A busy
       lane never swaps: it takes only its own key's jobs, and only while they are at the
       top priority.
    3. An idle lane with nothing uncovered may load a second copy of a covered key: the
       one with the largest backlog (capped at BACKLOG_CAP) that is worth a load (see
       `LoadCosts.worth_second_copy`), its best job by priority then age deciding ties.

    Which job of the chosen key runs is the first in turn at its priority (`fair_order`).

    A lane holding a model leaves a load to an empty upstream that serves its key, and
    chooses again (`leaving_loads_to_empty`).

    With one lane of one slot, no others and every model served, this is `pick_next`.
    """
    if not lane.free:
        return None
    pool = list(candidates)
    return leaving_loads_to_empty(
        lane, others, lambda also: _place(pool, lane, others, now, max_wait, costs, also)
    )


def _place(
    candidates: list[Candidate],
    lane: Lane,
    others: Sequence[Lane],
    now: float,
    max_wait: float,
    costs: LoadCosts,
    also_covered: frozenset[str],
) -> Candidate | None:
    serves = lane.serves
    runnable = [c for c in candidates if c.not_before <= now and serves(model_of(c.model_key))]
    covered = covered_keys(lane, others) | also_covered
    busy = lane.running > 0
    open_ = [c for c in runnable if c.model_key not in covered]
    starved = [c for c in open_ if is_starved(c, now, max_wait)]
    if starved:
        first = min(starved, key=rank)
        return first if first.model_key == lane.resident or not busy else None
    if open_:
        top = max(c.priority for c in open_)
        at_top = [c for c in open_ if c.priority == top]
        own = lane.resident
        if own is not None and any(c.model_key == own for c in at_top):
            return first_in_turn(at_top, own, top)
        return None if busy else first_in_turn(at_top, min(at_top, key=age_order).model_key, top)
    if busy or not runnable:
        return None
    # a key left to an empty upstream is not copied before that upstream has it
    held = [c for c in runnable if c.model_key not in also_covered]
    head = _second_copy(held, others, costs)
    return None if head is None else first_in_turn(held, head.model_key, head.priority)


def _second_copy(
    runnable: list[Candidate], others: Sequence[Lane], costs: LoadCosts
) -> Candidate | None:
    by_key: dict[str, list[Candidate]] = {}
    for c in runnable:
        by_key.setdefault(c.model_key, []).append(c)
    options = (
        (key, min(len(jobs), BACKLOG_CAP), min(jobs, key=rank)) for key, jobs in by_key.items()
    )
    return best_copy(options, others, costs)


def best_copy(
    options: Iterable[tuple[str, int, Candidate]], others: Sequence[Lane], costs: LoadCosts
) -> Candidate | None:
    """Of (key, backlog capped at BACKLOG_CAP, its best job by priority then age) for keys
    held elsewhere: the best job of the largest backlog worth a second copy (ties: the
    better job), or None. The rule and its SQL twin both choose here (and then run the
    chosen key's first job in turn at that job's priority)."""
    best: tuple[int, tuple[int, float, str]] | None = None
    choice: Candidate | None = None
    for key, backlog, head in options:
        holding = sum(o.slots for o in others if o.resident == key)
        if not costs.worth_second_copy(key, backlog, holding):
            continue
        order = (-backlog, rank(head))
        if best is None or order < best:
            best, choice = order, head
    return choice
