"""The state machine over a real foreman and stubs (see machine.py).

`make test` runs a short profile; `make fuzz` (FUZZ_PROFILE=long) runs batches until
FUZZ_EXAMPLES runs or FUZZ_MINUTES minutes, then prints what it tried. Both profiles use
the same two stub processes; each run draws whether foreman drives one or both, so every
profile exercises two upstreams (`upstreams_2` in what it tried says how often). The
replica dimension (machine_replicas.py) runs the same machine on PostgreSQL, where a run
may start a second replica and kill either; FUZZ_REPLICA_EXAMPLES runs (3, or 100 long),
within the same FUZZ_MINUTES.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from foreman.testing import CannotMount, small_disk
from tests.pg.cluster import PostgresCluster

from .fleet_checks import completed_generations, crowding, most_open
from .machine import TRIED, ForemanMachine, StubHandle
from .machine_replicas import ReplicaMachine

pytestmark = pytest.mark.slow

LONG = os.environ.get("FUZZ_PROFILE") == "long"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200" if LONG else "8"))
MINUTES = float(os.environ.get("FUZZ_MINUTES", "10" if LONG else "1"))
STEPS = int(os.environ.get("FUZZ_STEPS", "40" if LONG else "25"))


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[StubHandle]]:
    """Two stub processes: upstream `a` with one slot, `b` with two (OLLAMA_NUM_PARALLEL=2).
    A run may kill either and start it again; whichever process is current is stopped."""
    logs = tmp_path_factory.mktemp("stubs")
    handles = [StubHandle("a", 1, logs / "a.log"), StubHandle("b", 2, logs / "b.log")]
    try:
        for handle in handles:
            handle.start()
        yield handles
    finally:
        for handle in handles:
            if handle.proc is not None:
                handle.proc.terminate()


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """A small tmpfs for the full-disk rule. Without root or a tmpfs the rule is left out,
    except under CI, where that fails the test."""
    try:
        with small_disk(tmp_path_factory.mktemp("disk"), "64m") as where:
            yield where
    except CannotMount as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        yield None


@pytest.mark.timeout(int(MINUTES * 60 * 2) + 300)
def test_foreman_keeps_its_promises_under_faults_kills_and_cancels(
    stubs: list[StubHandle], disk: Path | None, tmp_path: Path
) -> None:
    ForemanMachine.stubs = stubs
    ForemanMachine.work = tmp_path
    ForemanMachine.disk = disk
    TRIED.clear()
    started = time.monotonic()
    while TRIED["runs"] < EXAMPLES and time.monotonic() - started < MINUTES * 60:
        run_state_machine_as_test(
            ForemanMachine,
            settings=settings(
                max_examples=min(5, EXAMPLES - TRIED["runs"]),
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    elapsed = time.monotonic() - started
    tried = ", ".join(f"{name} {count}" for name, count in sorted(TRIED.items()))
    print(f"\nstate machine: {TRIED['runs']} runs in {elapsed:.0f}s; tried: {tried}")
    assert TRIED["runs"] > 0


REPLICA_EXAMPLES = int(os.environ.get("FUZZ_REPLICA_EXAMPLES", "100" if LONG else "3"))


@pytest.mark.timeout(int(MINUTES * 60 * 2) + 300)
def test_replicas_on_postgresql_keep_the_promises_under_kills_of_either(
    stubs: list[StubHandle], postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    ReplicaMachine.stubs = stubs
    ReplicaMachine.work = tmp_path
    ReplicaMachine.disk = None
    ReplicaMachine.cluster = postgres_cluster
    TRIED.clear()
    started = time.monotonic()
    while TRIED["runs"] < REPLICA_EXAMPLES and time.monotonic() - started < MINUTES * 60:
        run_state_machine_as_test(
            ReplicaMachine,
            settings=settings(
                max_examples=min(5, REPLICA_EXAMPLES - TRIED["runs"]),
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    elapsed = time.monotonic() - started
    tried = ", ".join(f"{name} {count}" for name, count in sorted(TRIED.items()))
    print(f"\nstate machine, replicas: {TRIED['runs']} runs in {elapsed:.0f}s; tried: {tried}")
    assert TRIED["runs"] > 0


def _entry(
    seq: int,
    arrival: float,
    end: float | None,
    cancelled: bool = False,
    model: str = "llama3",
    prompt: str = "",
    status: int | None = 200,
    fault: str | None = None,
) -> dict[str, object]:
    return {
        "seq": seq,
        "kind": "chat",
        "path": "/api/chat",
        "model": model,
        "body": {"model": model, "messages": [{"role": "user", "content": prompt}]},
        "arrival": arrival,
        "end": end,
        "cancelled": cancelled,
        "status": status,
        "fault": fault,
    }


def _clashes(record: list[dict[str, object]], slots: int = 1) -> list[int]:
    return [int(problem.split()[0][1:]) for problem in crowding(record, slots)]


def test_the_one_at_a_time_check_sees_overlaps_and_forgives_only_abandoned_requests() -> None:
    apart = [_entry(1, 0.0, 1.0), _entry(2, 1.0, 2.0)]
    overlapping = [_entry(1, 0.0, 1.0), _entry(2, 0.5, 2.0)]
    still_open = [_entry(1, 0.0, None), _entry(2, 0.5, 2.0)]
    abandoned = [_entry(1, 0.0, 1.0, cancelled=True), _entry(2, 0.99, 2.0)]
    assert _clashes(apart) == []
    assert _clashes(overlapping) == [2]
    assert _clashes(still_open) == [2]
    assert _clashes(abandoned) == []


def test_the_slots_check_allows_as_many_as_the_slots_of_one_model_and_no_more() -> None:
    two = [_entry(1, 0.0, 2.0), _entry(2, 0.5, 2.0)]
    three = [*two, _entry(3, 1.0, 2.0)]
    other_model = [_entry(1, 0.0, 2.0), _entry(2, 0.5, 2.0, model="mistral")]
    same_name = [_entry(1, 0.0, 2.0), _entry(2, 0.5, 2.0, model="llama3:latest")]
    assert _clashes(two, slots=2) == []
    assert _clashes(three, slots=2) == [3]
    assert _clashes(other_model, slots=2) == [2]
    assert _clashes(same_name, slots=2) == []
    assert [most_open(r) for r in (two, three, other_model)] == [2, 3, 2]
    assert most_open([_entry(1, 0.0, 1.0), _entry(2, 1.0, 2.0)]) == 1


def test_only_whole_answers_count_as_generations() -> None:
    record = [
        _entry(1, 0.0, 1.0, prompt="a"),
        _entry(2, 1.0, 2.0, prompt="a", cancelled=True),
        _entry(3, 2.0, 3.0, prompt="a", fault="cut"),
        _entry(4, 3.0, 4.0, prompt="a", status=500),
        _entry(5, 4.0, None, prompt="b"),
        _entry(6, 5.0, 6.0),  # an explicit load: no prompt
    ]
    elsewhere = [_entry(1, 0.0, 1.0, prompt="a"), _entry(2, 1.0, 2.0, prompt="b")]
    assert completed_generations([record, elsewhere]) == {"a": 2, "b": 1}
