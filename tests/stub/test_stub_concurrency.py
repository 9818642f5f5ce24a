"""One chat at a time (NUM_PARALLEL=1), embeddings alongside, and client disconnects.

Nothing here depends on timing: requests are kept in flight with `hold()` and the test waits
on the stub's own record with `wait_until`.
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import Any

import httpx
import trio

from foreman.stub import StubOllama

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def test_concurrent_chats_are_served_one_at_a_time_and_counted(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.hold()
    answers: list[dict[str, Any]] = []

    async def ask(index: int) -> None:
        body = {**CHAT, "messages": [{"role": "user", "content": f"question {index}"}]}
        answers.append((await client.post("/api/chat", json=body)).json())

    async with trio.open_nursery() as nursery:
        for index in range(3):
            nursery.start_soon(ask, index)
        with trio.fail_after(5):
            await stub.wait_until(
                lambda: (
                    stub.inflight_inference == 3
                    and any(entry.tokens == 0 and entry.start for entry in stub.requests)
                )
            )
        assert stub.max_inflight_inference == 3
        running = [entry for entry in stub.requests if entry.start is not None]
        assert len(running) == 1  # the other two wait for the runner
        stub.release()
    assert len(answers) == 3
    assert all(a["done"] for a in answers)
    entries = sorted(stub.requests, key=lambda entry: entry.start or 0)
    for earlier, later in itertools.pairwise(entries):
        assert earlier.end is not None
        assert later.start is not None
        assert later.start >= earlier.end
    assert [e.seq for e in entries] == sorted(e.seq for e in entries)  # FIFO
    assert stub.inflight_inference == 0


async def test_sequential_chats_never_overlap(stub: StubOllama, client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await client.post("/api/chat", json=CHAT)
    await client.post("/api/generate", json={"model": "llama3"})  # loads do not count
    assert stub.max_inflight_inference == 1


async def test_embeddings_run_while_a_chat_is_in_flight(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.hold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, "/api/chat", json=CHAT))
        with trio.fail_after(5):
            await stub.wait_until(lambda: stub.inflight_inference == 1)
            response = await client.post(
                "/api/embed", json={"model": "nomic-embed-text", "input": "x"}
            )
        assert response.status_code == 200
        chat, embed = stub.requests
        assert chat.end is None
        assert embed.end is not None
        stub.release()
    assert stub.chat_model == "llama3:latest"
    assert stub.embed_model == "nomic-embed-text:latest"


async def test_client_closing_mid_stream_is_recorded_as_cancelled(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.configure(token_delay=0.01, tokens=1000)
    body = {**CHAT, "stream": True}
    async with client.stream("POST", "/api/chat", json=body) as response:
        async for _line in response.aiter_lines():
            break
    with trio.fail_after(5):
        await stub.wait_until(lambda: stub.requests[0].end is not None)
    entry = stub.requests[0]
    assert entry.cancelled
    assert 0 < entry.tokens < 1000
    assert stub.inflight_inference == 0
    assert stub.inflight_requests == 0


async def test_waiting_request_cancelled_by_its_client_leaves_the_queue(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.hold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, "/api/chat", json=CHAT))
        with trio.fail_after(5):
            await stub.wait_until(lambda: stub.inflight_inference == 1)
        async with trio.open_nursery() as impatient:
            impatient.start_soon(partial(client.post, "/api/chat", json=CHAT))
            with trio.fail_after(5):
                await stub.wait_until(lambda: len(stub.requests) == 2)
            impatient.cancel_scope.cancel()  # the client gives up and closes its connection
        with trio.fail_after(5):
            await stub.wait_until(lambda: len(stub.requests) == 2 and stub.requests[1].finished)
        assert stub.requests[1].cancelled
        assert stub.requests[1].start is None
        stub.release()
    assert not stub.requests[0].cancelled


async def test_keep_alive_connections_are_reused(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    for _ in range(3):
        await client.get("/api/version")
        await client.post("/api/chat", json={**CHAT, "stream": True})
    assert len({entry.connection for entry in stub.requests}) == 1
    assert stub.open_connections == 1


async def test_many_requests_are_served_quickly(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    async def burst() -> None:
        for _ in range(25):
            response = await client.post("/api/generate", json={"model": "llama3", "prompt": "x"})
            assert response.status_code == 200

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(burst)
    assert len(stub.requests) == 200
    assert all(entry.status == 200 for entry in stub.requests)
