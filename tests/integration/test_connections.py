"""Client connections are capped, silent ones are closed at the head deadline, and the
worker keeps its own connections to Ollama whatever the relayed routes do."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.stub import StubOllama
from foreman.testing import running_foreman
from foreman.upstream import RELAY_CONNECTIONS

# generous: an answer that takes this long means the server never gave it
DEADLINE = 30.0


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def silent_connections(
    url: str, count: int, stack: AsyncExitStack
) -> list[trio.SocketStream]:
    """`count` connections that send nothing, closed when `stack` is."""
    host, port = address(url)
    streams = []
    for _ in range(count):
        stream = await trio.open_tcp_stream(host, port)
        stack.push_async_callback(stream.aclose)
        streams.append(stream)
    return streams


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(DEADLINE):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def health_on(stream: trio.SocketStream) -> None:
    """One /health request on `stream`, answered 200, the connection kept open."""
    await stream.send_all(b"GET /health HTTP/1.1\r\nHost: foreman\r\n\r\n")
    answer = b""
    with trio.fail_after(DEADLINE):
        while not answer.endswith(b"}"):
            answer += await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 200")


async def answered_then_idle(url: str, stack: AsyncExitStack) -> trio.SocketStream:
    """A connection that made one request and now sits idle (keep-alive)."""
    stream = (await silent_connections(url, 1, stack))[0]
    await health_on(stream)
    return stream


@pytest.fixture
async def capped(settings: Settings) -> AsyncIterator[str]:
    """foreman holding at most 8 connections, with a head deadline past every wait here."""
    async with running_foreman(settings, max_connections=8, header_timeout=600.0) as url:
        yield url


async def test_a_silent_connection_is_closed_at_the_header_deadline(settings: Settings) -> None:
    # regression: a connection that never sent a head held its place for the 75 s
    # keep-alive timeout, so a few hundred of them locked everyone out
    async with (
        running_foreman(settings, max_connections=8, header_timeout=0.3) as url,
        AsyncExitStack() as stack,
    ):
        streams = await silent_connections(url, 12, stack)
        answers = [await read_until_closed(stream) for stream in streams]
        # the 8 the cap let in are closed without a word; the rest were refused at once
        assert answers.count(b"") >= 8
        assert all(a == b"" or a.startswith(b"HTTP/1.1 503") for a in answers)
        async with httpx.AsyncClient(base_url=url, timeout=DEADLINE) as client:
            assert (await client.get("/health")).status_code == 200


async def test_keep_alive_between_requests_is_not_cut_by_the_header_deadline(
    settings: Settings,
) -> None:
    async with running_foreman(settings, header_timeout=0.2) as url, AsyncExitStack() as stack:
        stream = await answered_then_idle(url, stack)
        # a silent connection opened now is closed at the head deadline; by then the
        # answered one has been idle at least as long, and is still open
        silent = (await silent_connections(url, 1, stack))[0]
        assert await read_until_closed(silent) == b""
        await health_on(stream)


async def test_a_connection_over_the_cap_gets_503_and_room_comes_back(capped: str) -> None:
    async with AsyncExitStack() as stack:
        held = await silent_connections(capped, 8, stack)
        over = (await silent_connections(capped, 1, stack))[0]
        answer = await read_until_closed(over)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"Retry-After: 1" in answer
        assert b"too many connections" in answer
        for stream in held:
            await stream.aclose()
    # the places are given back as the server sees the closes
    async with httpx.AsyncClient(base_url=capped, timeout=DEADLINE) as client:
        with trio.fail_after(DEADLINE):
            while True:
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await trio.sleep(0.01)


async def test_at_the_cap_a_new_client_takes_the_place_of_the_longest_idle_one(
    capped: str,
) -> None:
    # regression: one cheap request per connection, then silence, held every place for
    # the whole keep-alive timeout (75 s), and every new client got 503
    async with AsyncExitStack() as stack:
        idle = [await answered_then_idle(capped, stack) for _ in range(8)]
        async with httpx.AsyncClient(base_url=capped, timeout=DEADLINE) as client:
            assert (await client.get("/health")).status_code == 200
        # the one idle longest was closed to make room, without a word
        assert await read_until_closed(idle[0]) == b""
        # a connection that has not sent its first request yet is not idle: the next
        # new client takes the place of the idle one, not of the slow one
        slow = (await silent_connections(capped, 1, stack))[0]
        async with httpx.AsyncClient(base_url=capped, timeout=DEADLINE) as client:
            assert (await client.get("/health")).status_code == 200
        assert await read_until_closed(idle[1]) == b""
        await slow.send_all(b"GET /health HTTP/1.1\r\nHost: foreman\r\nConnection: close\r\n\r\n")
        assert (await read_until_closed(slow)).startswith(b"HTTP/1.1 200")


# the size of the one pool relayed calls and the worker used to share
OLD_SHARED_POOL = 256
FLOOD = OLD_SHARED_POOL + 64


async def test_the_worker_and_the_probe_keep_connections_a_relay_flood_cannot_take(
    stub: StubOllama, settings: Settings
) -> None:
    """Relayed embeddings that never end hold every relay connection (and more); a job
    still runs and /ready still reaches Ollama."""
    stub.add_fault("hang", path="/api/embed", count=None)
    limits = httpx.Limits(max_connections=FLOOD)
    async with (
        running_foreman(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client,
        httpx.AsyncClient(base_url=url, timeout=DEADLINE) as keyed,
        trio.open_nursery() as flood,
    ):
        body = {"model": "nomic-embed-text", "input": "slow"}

        async def embed() -> None:
            with contextlib.suppress(httpx.TransportError):
                await client.post("/api/embed", json=body)

        for _ in range(FLOOD):
            flood.start_soon(embed)
        # every relay connection is held (the rest of the flood waits in foreman)
        with trio.fail_after(DEADLINE):
            await stub.wait_until(
                lambda: stub.state.recorder.inflight_requests >= RELAY_CONNECTIONS
            )
        with trio.fail_after(DEADLINE):
            job = {"model": "llama3", "prompt": "still served?", "stream": False}
            r = await keyed.post("/api/generate", json=job)
            assert r.status_code == 200, r.text
            assert r.json()["done"] is True
            ready = await keyed.get("/ready")
            assert ready.status_code == 200, ready.text
        flood.cancel_scope.cancel()
