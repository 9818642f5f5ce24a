"""The forecast of the queue (`foreman.forecast`): positions and start times, by hand and
as properties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from foreman.forecast import Backlog, Standing, Upstream, forecast
from foreman.policy import LoadCosts

A, B, C = "a:latest", "b:latest", "c:latest"
MEASURED = LoadCosts({A: 10.0, B: 20.0, C: 5.0}, {A: 1.0, B: 2.0, C: 0.5})


def test_one_upstream_draining_its_own_model():
    """The job with 5 of its model's jobs ahead starts after the running job's 0.4 s
    left and those 5 jobs of a second each."""
    made = forecast([Upstream("gpu0", 1, A, busy_seconds=0.4)], [Backlog(A, 9, 0, 1.0)], MEASURED)
    assert made.standing(A, 0) == Standing(0, 0.4)
    assert made.standing(A, 5) == Standing(5, 5.4)


def test_a_model_not_loaded_waits_for_the_loaded_one_to_drain_then_its_load():
    made = forecast(
        [Upstream("gpu0", 1, A)], [Backlog(A, 3, 0, 5.0), Backlog(B, 4, 0, 1.0)], MEASURED
    )
    # A drains first (3 s), then B loads (20 s); B's third job waits for two of B's
    assert made.standing(B, 2) == Standing(3 + 2, 3 + 20 + 2 * 2.0)


def test_unloaded_models_load_in_the_rules_order():
    """Priority first, then the oldest job: C (priority 1) loads before B, which is older
    than A."""
    made = forecast(
        [Upstream("gpu0", 1, None)],
        [Backlog(A, 1, 0, 5.0), Backlog(B, 1, 0, 1.0), Backlog(C, 1, 1, 9.0)],
        MEASURED,
    )
    assert [made.standing(k, 0).position for k in (C, B, A)] == [0, 1, 2]
    assert made.standing(C, 0).starts_in == 5.0
    assert made.standing(B, 0).starts_in == 5.0 + 0.5 + 20.0


def test_slots_start_their_jobs_together():
    made = forecast([Upstream("gpu0", 4, A)], [Backlog(A, 10, 0, 1.0)], MEASURED)
    assert [made.standing(A, n).starts_in for n in (0, 3, 4, 8)] == [0.0, 0.0, 1.0, 2.0]


def test_across_the_fleet_other_upstreams_jobs_count_as_they_start():
    """gpu0 drains A (a job a second); gpu1 is empty and loads B (20 s): B's first job
    starts at 20 s, by when 20 of A's jobs have started (the 21st starts at 20 s, not
    before)."""
    made = forecast(
        [Upstream("gpu0", 1, A), Upstream("gpu1", 1, None)],
        [Backlog(A, 100, 0, 1.0), Backlog(B, 3, 0, 2.0)],
        MEASURED,
    )
    assert made.standing(B, 0) == Standing(20, 20.0)
    assert made.standing(A, 10) == Standing(10, 10.0)


def test_an_upstream_runs_only_the_models_it_may_serve():
    made = forecast(
        [Upstream("gpu0", 1, None, serves=lambda model: model != "b:latest")],
        [Backlog(A, 1, 0, 5.0), Backlog(B, 2, 0, 1.0)],
        MEASURED,
    )
    assert made.standing(A, 0) == Standing(0, 10.0)
    # nothing may run B: its jobs ahead are all that is known, and no time is given
    assert made.standing(B, 1) == Standing(1, None)


def test_no_estimate_until_the_models_job_time_is_measured():
    made = forecast([Upstream("gpu0", 1, A)], [Backlog(A, 3, 0, 1.0)], LoadCosts({A: 10.0}, {}))
    assert made.standing(A, 2) == Standing(2, None)


def test_with_no_healthy_upstream_only_the_jobs_ahead_in_its_model_count():
    made = forecast([], [Backlog(A, 3, 0, 1.0)], MEASURED)
    assert made.standing(A, 2) == Standing(2, None)


KEYS = st.sampled_from([A, B, C])
UPSTREAMS = st.lists(
    st.builds(
        Upstream,
        st.sampled_from(["gpu0", "gpu1", "gpu2"]),
        st.sampled_from([1, 2, 4]),
        st.one_of(st.none(), KEYS),
        st.sampled_from([0.0, 0.5, 3.0]),
    ),
    max_size=3,
)
BACKLOGS = st.lists(
    st.builds(
        Backlog,
        KEYS,
        st.integers(min_value=1, max_value=40),
        st.sampled_from([0, 0, 1]),
        st.sampled_from([0.0, 1.0, 2.0]),
    ),
    max_size=3,
    unique_by=lambda b: b.key,
)


@given(UPSTREAMS, BACKLOGS, st.data())
def test_further_back_never_stands_better(ups, backlogs, data):
    """A job with more of its model's jobs ahead has as large a position and as late a
    start; a position never exceeds the jobs queued before it could be counted."""
    made = forecast(ups, backlogs, MEASURED)
    total = sum(b.queued for b in backlogs)
    for b in backlogs:
        ahead = data.draw(st.integers(min_value=0, max_value=b.queued - 1))
        here = made.standing(b.key, ahead)
        later = made.standing(b.key, min(ahead + 1, b.queued - 1))
        assert ahead <= here.position <= later.position <= total - 1
        if here.starts_in is not None:
            assert later.starts_in is not None
            assert 0 <= here.starts_in <= later.starts_in


@given(UPSTREAMS, BACKLOGS)
def test_every_model_some_upstream_may_run_gets_a_time(ups, backlogs):
    made = forecast(ups, backlogs, MEASURED)
    if ups:
        for b in backlogs:
            assert made.standing(b.key, 0).starts_in is not None
