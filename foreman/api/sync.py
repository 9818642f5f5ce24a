"""Answers a synchronous request from its job: waits for the worker, relays what it sends.

If the client hangs up while its job waits, the job is cancelled and never reaches
Ollama; if it hangs up while the job runs, the upstream request is closed at once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import trio
from quart import Response

from foreman.api.proxy import _response
from foreman.jobs import Job, JobState
from foreman.queue import JobQueue
from foreman.relay import Chunk, Reply, StreamStart, Ticket

DISCONNECTED = "client disconnected"
# bound on the shielded clean-up after a client leaves (a store write, normally instant)
CLEANUP_SECONDS = 30


async def answer(queue: JobQueue, job: Job, ticket: Ticket) -> Response:
    try:
        try:
            first = await ticket.receive_channel.receive()
        except trio.EndOfChannel:
            queue.relay.detach(ticket)
            return await _ended_without_answer(queue, job)
    except trio.Cancelled:
        with trio.move_on_after(CLEANUP_SECONDS, shield=True):
            await _client_left(queue, job, ticket)
        raise
    if isinstance(first, Reply):
        queue.relay.detach(ticket)
        return _response(first.body, first.status, first.headers)
    assert isinstance(first, StreamStart)

    async def lines() -> AsyncIterator[bytes]:
        complete = False
        try:
            yield first.first
            async for message in ticket.receive_channel:
                assert isinstance(message, Chunk)
                yield message.data
            complete = True
        finally:
            if not complete:
                with trio.move_on_after(CLEANUP_SECONDS, shield=True):
                    await _client_left(queue, job, ticket)
            queue.relay.detach(ticket)

    return _response(lines(), first.status, first.headers)


async def _client_left(queue: JobQueue, job: Job, ticket: Ticket) -> None:
    """Cancel the job of a client that hung up (callers shield this)."""
    queue.relay.detach(ticket)
    await queue.cancel(job.id, DISCONNECTED)


async def _ended_without_answer(queue: JobQueue, job: Job) -> Response:
    """The job finished without the worker answering us (e.g. it was cancelled)."""
    current = await queue.get(job.id) or job
    headers = {"X-Foreman-Job-Id": job.id}
    if current.state is JobState.CANCELLED:
        message = f"job {job.id} was cancelled" + (f": {current.error}" if current.error else "")
        status = 499
    else:
        message = current.error or f"job {job.id} ended as {current.state.value}"
        status = 500
    return Response(
        json.dumps({"error": message}),
        status=status,
        content_type="application/json; charset=utf-8",
        headers=headers,
    )
