"""Strategies shared by the property tests: small domains, so collisions and ties happen."""

from __future__ import annotations

from hypothesis import strategies as st

from foreman.jobs import JobState
from foreman.policy import Candidate, Lane, LoadCosts

# a few residency keys, including two for one model that differ only in runner options
MODEL_KEYS = (
    "a:latest",
    "b:latest",
    "m:latest",
    'm:latest {"num_ctx":8192}',
    "host:5000/ns/c:v1",
)
# half the time a model from the list; otherwise nothing, or a model nothing is queued for
RESIDENTS = st.one_of(
    st.none(), st.just("z:latest"), st.sampled_from(MODEL_KEYS), st.sampled_from(MODEL_KEYS)
)

# distinct ids of mixed length and case, handed out in a drawn order, so the id tie-break
# is exercised both ways and Python and SQLite must agree on how strings sort
ID_POOL = (
    "0", "00", "01", "1", "10", "9", "A", "AA", "B", "Z", "_", "a", "b", "z", "zz", "~",
    "01ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5FAW", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ",
    "M", "N", "m", "n", "x",
)  # fmt: skip
MAX_JOBS = len(ID_POOL)

# most jobs at the default priority, so groups of one priority are large
PRIORITIES = st.one_of(st.just(0), st.integers(min_value=-2, max_value=2))
# whole numbers make equal timestamps likely; arbitrary floats check the comparisons
TIMES = st.one_of(
    st.integers(min_value=0, max_value=8).map(float),
    st.floats(min_value=0, max_value=20, allow_nan=False, allow_infinity=False),
)
# most jobs never failed; the rest wait out a backoff that may or may not be over
NOT_BEFORE = st.one_of(st.just(0.0), st.just(0.0), TIMES)
NOWS = st.one_of(
    st.integers(min_value=0, max_value=30).map(float),
    st.floats(min_value=0, max_value=30, allow_nan=False, allow_infinity=False),
)
# a quarter of the time nothing can starve, so the resident-first rule gets exercised
MAX_WAITS = st.one_of(
    st.just(1e9),
    st.sampled_from([1.0, 10.0, 30.0]),
    st.integers(min_value=1, max_value=30).map(float),
    st.floats(min_value=0.5, max_value=30, allow_nan=False, allow_infinity=False),
)

# turns from a small range, so jobs of one key and priority often share one (age decides)
# and often do not (the turn decides against age)
TURNS = st.sampled_from([0, 0, 1, 2, 5])
# (model_key, priority, enqueued_at, not_before, turn): a candidate without its id
SPREAD = st.tuples(st.sampled_from(MODEL_KEYS), PRIORITIES, TIMES, NOT_BEFORE, TURNS)
# a crowd: few priorities and arrival instants, so top groups are large and ties common
CROWD = st.tuples(
    st.sampled_from(MODEL_KEYS[:3]),
    st.sampled_from([0, 0, 0, 1]),
    st.sampled_from([0.0, 1.0, 2.0]),
    st.sampled_from([0.0, 0.0, 0.0, 25.0]),
    TURNS,
)


@st.composite
def _candidates(
    draw: st.DrawFn, spec: st.SearchStrategy[tuple[str, int, float, float, int]]
) -> list[Candidate]:
    # short lists and long ones: plain `st.lists` keeps most lists tiny, where equal
    # timestamps and crowded priorities almost never happen
    specs = draw(
        st.one_of(
            st.lists(spec, max_size=6),
            st.lists(spec, min_size=8, max_size=MAX_JOBS),
        )
    )
    ids = draw(st.permutations(ID_POOL))
    return [Candidate(ids[i], *s) for i, s in enumerate(specs)]


CANDIDATE_LISTS = st.one_of(_candidates(SPREAD), _candidates(CROWD))


@st.composite
def _rows(draw: st.DrawFn) -> list[tuple[Candidate, JobState]]:
    cands = draw(CANDIDATE_LISTS)
    # mostly queued, some in every other state
    states = st.one_of(
        st.just(JobState.QUEUED), st.just(JobState.QUEUED), st.sampled_from(list(JobState))
    )
    return [(c, draw(states)) for c in cands]


ROWS = _rows()


# -- the fleet ---------------------------------------------------------------------------

MODEL_NAMES = tuple(sorted({k.partition(" ")[0] for k in MODEL_KEYS}))
# what a lane may serve: everything most of the time, else a subset of the models
SERVES = st.one_of(
    st.just(frozenset(MODEL_NAMES)),
    st.frozensets(st.sampled_from(MODEL_NAMES)),
)


@st.composite
def _lane(draw: st.DrawFn, name: str) -> Lane:
    slots = draw(st.sampled_from([1, 1, 2, 4]))
    resident = draw(RESIDENTS)
    running = draw(st.integers(min_value=0, max_value=slots)) if resident is not None else 0
    loading = running == 1 and draw(st.booleans())
    serves = draw(SERVES)
    return Lane(name, slots, resident, running, loading, serves=serves.__contains__)


LANES = _lane("here")
OTHER_LANES = st.lists(st.sampled_from(["gpu1", "gpu2", "gpu3"]), unique=True, max_size=3).flatmap(
    lambda names: st.tuples(*(_lane(n) for n in names))
)
# measured costs: none, or a few keys' load and job times
COSTS = st.builds(
    LoadCosts,
    st.dictionaries(st.sampled_from(MODEL_KEYS), st.sampled_from([0.5, 2.0, 30.0])),
    st.dictionaries(st.sampled_from(MODEL_KEYS), st.sampled_from([0.1, 1.0, 10.0])),
)
