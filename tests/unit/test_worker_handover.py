"""What the worker hands the waiting client: facts, never an HTTP reply of its own (see
_worker_harness). The route decides the shape (tests/unit/test_failure_replies.py)."""

from __future__ import annotations

import json
from pathlib import Path

import trio.testing

from foreman.jobs import Endpoint, JobState
from foreman.tickets import Ending, Failed, Reply

from ._worker_harness import chat, open_rig, status

NOT_FOUND = "model 'nosuch' not found"


async def test_a_failed_load_hands_over_ollamas_native_answer_untouched(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock) as rig:
        rig.ollama.script("load", status(404, NOT_FOUND))
        body = {"model": "nosuch", "messages": [{"role": "user", "content": "hi"}]}
        new = chat("nosuch", endpoint=Endpoint.V1_CHAT, body=json.dumps(body).encode())
        job = await rig.submit(new)
        ticket = rig.worker.tickets.attach(job.id)
        rig.start()
        failed = await rig.until_state(job.id, JobState.FAILED)
        last = ticket.receive_channel.receive_nowait()

    assert isinstance(last, Failed)
    assert last.ending is Ending.FAILED
    assert last.message == NOT_FOUND == failed.error
    # Ollama's native body as it came, and the native route that gave it: the /v1
    # shape is the route's to write
    assert last.answered_by == "/api/chat"
    assert last.upstream is not None
    assert last.upstream.status == 404
    assert json.loads(last.upstream.body) == {"error": NOT_FOUND}
    assert not any(name.lower().startswith("x-foreman-") for name, _ in last.upstream.headers)
    assert last.queue_ms == failed.queue_ms


async def test_a_whole_answer_is_ollamas_with_the_time_the_job_waited(
    db_path: Path, virtual_clock: trio.testing.MockClock
) -> None:
    async with open_rig(db_path, virtual_clock) as rig:
        job = await rig.submit(chat())
        ticket = rig.worker.tickets.attach(job.id)
        rig.start()
        done = await rig.until_state(job.id, JobState.DONE)
        last = ticket.receive_channel.receive_nowait()

    assert isinstance(last, Reply)
    assert last.status == 200
    assert json.loads(last.body)["done"] is True
    assert last.queue_ms == done.queue_ms
    assert not any(name.lower().startswith("x-foreman-") for name, _ in last.headers)
