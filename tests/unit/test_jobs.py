"""The transition table: what is legal, and that everything else raises."""

from __future__ import annotations

import itertools

import pytest

from foreman.jobs import (
    RUNNING_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    IllegalTransition,
    JobState,
    check_transition,
)

ALL_PAIRS = list(itertools.product(JobState, JobState))


@pytest.mark.parametrize(("old", "new"), sorted(TRANSITIONS))
def test_every_listed_transition_is_allowed(old, new):
    check_transition(old, new)


@pytest.mark.parametrize(("old", "new"), [p for p in ALL_PAIRS if p not in TRANSITIONS])
def test_every_unlisted_transition_raises(old, new):
    with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
        check_transition(old, new)


def test_no_state_transitions_to_itself():
    assert not [(o, n) for o, n in TRANSITIONS if o is n]


def test_terminal_states_lead_only_back_to_queued_by_a_retry():
    out_of_terminal = {(o, n) for o, n in TRANSITIONS if o in TERMINAL_STATES}
    assert out_of_terminal == {
        (JobState.FAILED, JobState.QUEUED),
        (JobState.CANCELLED, JobState.QUEUED),
    }
    assert not [n for o, n in TRANSITIONS if o is JobState.DONE]


def test_done_is_reached_only_from_working():
    assert {o for o, n in TRANSITIONS if n is JobState.DONE} == {JobState.WORKING}


def test_every_live_state_can_be_cancelled_and_failed():
    for state in (JobState.QUEUED, *RUNNING_STATES):
        assert (state, JobState.CANCELLED) in TRANSITIONS
        assert (state, JobState.FAILED) in TRANSITIONS


def test_running_jobs_can_be_put_back_in_the_queue():
    for state in RUNNING_STATES:
        assert (state, JobState.QUEUED) in TRANSITIONS


def test_state_flags_match_the_state_sets():
    assert {s for s in JobState if s.terminal} == {
        JobState.DONE,
        JobState.FAILED,
        JobState.CANCELLED,
    }
    assert {s for s in JobState if s.running} == {JobState.LOADING, JobState.WORKING}
    assert not TERMINAL_STATES & RUNNING_STATES
