"""Answers a synchronous request from its job: waits for the worker, relays what it sends.

If the client hangs up while its job waits, the job is cancelled and never reaches
Ollama; if it hangs up while the job runs, the upstream request is closed at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import trio
from quart import Response, request

from foreman.answers import Family, replay_stream
from foreman.api.errors import error_for
from foreman.api.proxy import build_response, request_body
from foreman.jobs import Endpoint, Job, JobState, NewJob
from foreman.queue import JobQueue
from foreman.relay import Chunk, Reply, StreamStart, Ticket
from foreman.store import IdempotencyConflict
from foreman.validate import (
    InvalidRequest,
    check_idempotency_key,
    check_ref,
    inference_request,
    parse_priority,
)

if TYPE_CHECKING:
    from foreman.api.app import Services

DISCONNECTED = "client disconnected"
# bound on the shielded clean-up after a client leaves (a store write, normally instant)
CLEANUP_SECONDS = 30


async def submit_and_answer(services: Services, endpoint: Endpoint) -> Response:
    """A synchronous chat/generate request: validate, store as a job, wait, answer.

    X-Foreman-Priority and X-Foreman-Ref set the job's priority and ref; an
    Idempotency-Key that names an existing job answers from that job instead.
    """
    raw = await request_body()
    headers = request.headers
    try:
        parsed = inference_request(endpoint, raw)
        priority = parse_priority(headers.get("X-Foreman-Priority"))
        ref = check_ref(headers.get("X-Foreman-Ref"))
        key = check_idempotency_key(headers.get("Idempotency-Key"))
    except InvalidRequest as exc:
        return error_for(endpoint.value, 400, str(exc))
    new = NewJob(
        endpoint=endpoint,
        model=parsed.model,
        model_key=parsed.model_key,
        body=raw,
        stream=parsed.stream,
        priority=priority,
        ref=ref,
        max_attempts=services.settings.max_attempts,
        idempotency_key=key,
        request_hash=hashlib.sha256(endpoint.value.encode() + b"\0" + raw).hexdigest()
        if key
        else None,
    )
    try:
        submitted = await services.queue.submit(new, attach=True)
    except IdempotencyConflict as exc:
        return error_for(endpoint.value, 409, str(exc))
    if submitted.ticket is None:
        return await replay(services.queue, submitted.job)
    return await answer(services.queue, submitted.job, submitted.ticket)


async def replay(queue: JobQueue, job: Job) -> Response:
    """Answer a repeated request (same Idempotency-Key) from the job it already made:
    wait for it to end, then answer with its stored result."""
    while not job.state.terminal:
        current = await queue.wait(job.id, 60.0)
        if current is None:
            return error_for(job.endpoint.value, 404, f"job {job.id} is gone")
        job = current
    headers = {"X-Foreman-Job-Id": job.id, "X-Foreman-Queue-Ms": str(job.queue_ms or 0)}
    if job.state is not JobState.DONE:
        status = 499 if job.state is JobState.CANCELLED else 500
        message = job.error or f"job {job.id} ended as {job.state.value}"
        return error_for(job.endpoint.value, status, message, headers)
    body = json.dumps(job.result, separators=(",", ":"))
    if job.stream:
        # the stored result holds the whole answer: a stream of one part, in the
        # endpoint's own framing (an NDJSON line, or one SSE event and [DONE] on /v1)
        content_type, data = replay_stream(job.endpoint, job.result)
        return Response(data, 200, headers, content_type=content_type)
    return Response(body, 200, headers, content_type="application/json; charset=utf-8")


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
        return build_response(first.body, first.status, first.headers)
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

    return build_response(lines(), first.status, first.headers)


async def _client_left(queue: JobQueue, job: Job, ticket: Ticket) -> None:
    """Cancel the job of a client that hung up (callers shield this)."""
    queue.relay.detach(ticket)
    await queue.cancel(job.id, DISCONNECTED)


async def _ended_without_answer(queue: JobQueue, job: Job) -> Response:
    """The job finished without the worker answering us (e.g. it was cancelled); the
    error takes the shape of the job's route family."""
    current = await queue.get(job.id) or job
    headers = {"X-Foreman-Job-Id": job.id}
    if current.state is JobState.CANCELLED:
        message = f"job {job.id} was cancelled" + (f": {current.error}" if current.error else "")
        status = 499
    else:
        message = current.error or f"job {job.id} ended as {current.state.value}"
        status = 500
    return Response(
        Family.of(job.endpoint).error_body(status, message),
        status=status,
        content_type="application/json; charset=utf-8",
        headers=headers,
    )
