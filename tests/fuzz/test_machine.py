"""The state machine over a real foreman and stub (see machine.py).

`make test` runs a short profile; `make fuzz` (FUZZ_PROFILE=long) runs batches until
FUZZ_EXAMPLES runs or FUZZ_MINUTES minutes, then prints what it tried.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from foreman.testing import CannotMount, small_disk, stub_process

from .machine import TOKENS, TRIED, ForemanMachine, concurrent_inference

pytestmark = pytest.mark.slow

LONG = os.environ.get("FUZZ_PROFILE") == "long"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200" if LONG else "8"))
MINUTES = float(os.environ.get("FUZZ_MINUTES", "10" if LONG else "1"))
STEPS = int(os.environ.get("FUZZ_STEPS", "40" if LONG else "25"))


@pytest.fixture(scope="module")
def stub_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc = stub_process(
        tmp_path_factory.mktemp("stub") / "stub.log",
        "--tokens",
        str(TOKENS),
        "--log-level",
        "warning",
    )
    url = proc.start()
    yield url
    proc.terminate()


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
    stub_url: str, disk: Path | None, tmp_path: Path
) -> None:
    ForemanMachine.stub_url = stub_url
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


def _entry(
    seq: int, arrival: float, end: float | None, cancelled: bool = False
) -> dict[str, object]:
    return {
        "seq": seq,
        "kind": "chat",
        "path": "/api/chat",
        "arrival": arrival,
        "end": end,
        "cancelled": cancelled,
    }


def test_the_one_at_a_time_check_sees_overlaps_and_forgives_only_abandoned_requests() -> None:
    apart = [_entry(1, 0.0, 1.0), _entry(2, 1.0, 2.0)]
    overlapping = [_entry(1, 0.0, 1.0), _entry(2, 0.5, 2.0)]
    still_open = [_entry(1, 0.0, None), _entry(2, 0.5, 2.0)]
    abandoned = [_entry(1, 0.0, 1.0, cancelled=True), _entry(2, 0.99, 2.0)]
    assert concurrent_inference(apart) == []
    assert [(a["seq"], b["seq"]) for a, b in concurrent_inference(overlapping)] == [(1, 2)]
    assert len(concurrent_inference(still_open)) == 1
    assert concurrent_inference(abandoned) == []
