"""Small builders shared by the unit tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from foreman.jobs import Endpoint, Job, JobState, NewJob


@attrs.define
class FakeClock:
    """Wall-clock time as the test says it is."""

    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_job(model_key: str = "m:latest", priority: int = 0, **fields: Any) -> NewJob:
    model = model_key.partition(" ")[0]
    values: dict[str, Any] = {
        "endpoint": Endpoint.CHAT,
        "model": model,
        "model_key": model_key,
        "body": b'{"model":"%s","messages":[]}' % model.encode(),
        "stream": True,
        "priority": priority,
    }
    values.update(fields)
    return NewJob(**values)


def stored_job(job_id: str, state: JobState = JobState.QUEUED, owner: str | None = None) -> Job:
    """A job as the store hands it to listeners, for tests of who hears a change."""
    return Job(
        id=job_id,
        endpoint=Endpoint.CHAT,
        model="m",
        model_key="m:latest",
        body=b"{}",
        stream=False,
        state=state,
        priority=0,
        attempts=0,
        max_attempts=5,
        not_before=0.0,
        enqueued_at=1.0,
        created_at=1.0,
        key_name=owner,
    )


def valid() -> bool:
    """A key check that always passes, for a stream's next batch."""
    return True


def later(nursery: trio.Nursery, at: float, act: Callable[[], object]) -> None:
    """Run `act` at trio time `at`, beside the batch being waited for."""

    async def run() -> None:
        await trio.sleep_until(at)
        act()

    nursery.start_soon(run)
