"""The `waiter` column: which replica's client waits for a job's answer (replicas only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from foreman.api.jobs import job_json
from foreman.events import JobEvents, Wakeup
from foreman.queue import JobQueue
from foreman.store import SyncStore
from foreman.tickets import Tickets
from tests.pg.backends import BACKENDS, database, open_face, open_store

from ._helpers import FakeClock, new_job


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SyncStore:
    return open_store(request, request.param, tmp_path / "state", FakeClock())


def test_a_jobs_waiter_is_stored_and_read_back_and_none_by_default(store: SyncStore) -> None:
    waited = store.enqueue(new_job(waiter="a1b2c3d4e5f6"))
    alone = store.enqueue(new_job())

    assert store.get(waited.id).waiter == waited.waiter == "a1b2c3d4e5f6"  # type: ignore[union-attr]
    assert store.get(alone.id).waiter is alone.waiter is None  # type: ignore[union-attr]
    # the job API says nothing of it
    assert "waiter" not in job_json(waited)
    assert "a1b2c3d4e5f6" not in repr(job_json(waited))


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_replicas_queue_names_itself_the_waiter_of_the_jobs_a_client_waits_for(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    face = await open_face(database(request, backend, tmp_path / "foreman.db"))
    try:
        events = JobEvents()
        replica = JobQueue(face, Tickets(), Wakeup(), events, lambda _: False, replica="tok")
        alone = JobQueue(face, Tickets(), Wakeup(), events, lambda _: False)

        waited = await replica.submit(new_job(), attach=True)
        collected = await replica.submit(new_job())
        single = await alone.submit(new_job(), attach=True)

        assert waited.job.waiter == "tok"
        assert (await face.get(waited.job.id)).waiter == "tok"  # type: ignore[union-attr]
        # nobody waits for a job submitted to be collected later; one foreman never says
        assert collected.job.waiter is None
        assert single.job.waiter is None
    finally:
        await face.close()
