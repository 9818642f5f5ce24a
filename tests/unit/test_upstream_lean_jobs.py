"""The worker's job call (`Upstream.open` with `lean`) over the lean pool, against the stub
Ollama and a scripted upstream: each behaviour is asserted for httpx and the lean pool
alike, so the two cannot drift apart. And `iter_lines`, chunk boundaries anywhere."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from foreman.daemon import _lean_pool
from foreman.relay_client import RelayPool
from foreman.retry import FailureKind, classify_status
from foreman.stub import StubConfig, StubOllama
from foreman.stub.faults import RUNNER_STOPPED
from foreman.upstream import (
    Upstream,
    UpstreamError,
    default_client,
    iter_lines,
    read_body,
    worker_connections,
)

from .test_relay_client import Launch, scripted  # noqa: F401 (a fixture)

DEADLINE = 30
JSON = {"Content-Type": "application/json"}


def chat(stream: bool) -> bytes:
    return json.dumps(
        {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    ).encode()


@pytest.fixture
def stub_config() -> StubConfig:
    return StubConfig()


@pytest.fixture
async def stub(nursery: trio.Nursery, stub_config: StubConfig) -> StubOllama:
    server = StubOllama(stub_config)
    await nursery.start(server.serve)
    return server


@pytest.fixture(params=["httpx", "lean"])
async def upstream(request: pytest.FixtureRequest, stub: StubOllama) -> AsyncIterator[Upstream]:
    """The worker's Upstream as the daemon builds it, with or without its lean pool."""
    lean = RelayPool(stub.url, worker_connections(1)) if request.param == "lean" else None
    async with default_client(stub.url, worker_connections(1)) as client:
        yield Upstream(client, read_timeout=30.0, lean=lean)
    if lean is not None:
        lean.close()


async def stream_lines(upstream: Upstream, body: bytes) -> list[bytes]:
    async with upstream.open(
        "POST", "/api/chat", body=body, headers=JSON, read_timeout=upstream.read_timeout, lean=True
    ) as response:
        assert response.status_code == 200
        assert "ndjson" in response.headers.get("content-type", "")
        return [line async for line in iter_lines(response)]


async def test_a_streamed_job_arrives_line_by_line_on_one_kept_connection(
    upstream: Upstream, stub: StubOllama
) -> None:
    for _ in range(3):
        lines = await stream_lines(upstream, chat(True))
        assert all(line.endswith(b"\n") for line in lines)
        assert json.loads(lines[-1])["done"] is True
        assert len(lines) == stub.state.config.tokens + 1
    assert stub.state.recorder.total_connections == 1
    if upstream.lean is not None:
        # it went through the lean pool, which keeps the connection
        assert len(upstream.lean._idle) == 1


async def test_a_non_streamed_job_arrives_whole(upstream: Upstream, stub: StubOllama) -> None:
    for _ in range(2):
        async with upstream.open(
            "POST", "/api/chat", body=chat(False), headers=JSON, lean=True
        ) as r:
            assert r.status_code == 200
            assert r.headers.get("content-type", "").startswith("application/json")
            answer = json.loads(await read_body(r))
        assert answer["done"] is True
    assert stub.state.recorder.total_connections == 1


async def test_the_stub_sees_the_same_request_from_either_client(stub: StubOllama) -> None:
    seen = []
    for lean in (None, RelayPool(stub.url, 1)):
        async with default_client(stub.url, 1) as client:
            upstream = Upstream(client, lean=lean)
            await stream_lines(upstream, chat(True))
        if lean is not None:
            lean.close()
        entry = stub.requests_of("chat")[-1]
        seen.append((entry.method, entry.target, entry.headers, entry.body))
    assert seen[0] == seen[1]
    assert seen[0][1] == "/api/chat"


async def test_the_lean_call_sends_httpxs_request_byte_for_byte(scripted: Launch) -> None:  # noqa: F811
    seen: list[bytes] = []

    async def record(stream: trio.SocketStream, request: bytes) -> None:
        seen.append(request)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    url = await scripted(record) + "/base"
    body = '{"prompt": "caf\u00e9"}'.encode()
    for lean in (None, RelayPool(url, 1)):
        async with default_client(url, 1) as client:
            upstream = Upstream(client, lean=lean)
            for _ in range(2):  # the second from the head kept for the method and headers
                async with upstream.open(
                    "POST", "/api/generate?x=%2F", body=body, headers=JSON, lean=True
                ) as response:
                    assert await read_body(response) == b"{}"
        if lean is not None:
            lean.close()
    assert len(seen) == 4
    assert seen[0].startswith(b"POST /base/api/generate?x=%2F HTTP/1.1\r\nHost: ")
    assert seen[0].endswith(b"\r\n\r\n" + body)
    assert seen[0] == seen[1] == seen[2] == seen[3]


async def test_a_refused_connection_is_an_outage(upstream: Upstream, stub: StubOllama) -> None:
    stub.stop_listening()
    with pytest.raises(UpstreamError) as raised:
        await stream_lines(upstream, chat(True))
    assert raised.value.kind is FailureKind.OUTAGE
    assert not raised.value.broken
    assert not raised.value.timed_out


async def test_an_error_status_carries_ollamas_answer(upstream: Upstream, stub: StubOllama) -> None:
    stub.add_fault("status", status=500, path="/api/chat")
    with pytest.raises(UpstreamError) as raised:
        await stream_lines(upstream, chat(True))
    err = raised.value
    assert err.kind is classify_status(500)
    assert err.status == 500
    assert err.message == RUNNER_STOPPED
    assert json.loads(err.body or b"")["error"] == RUNNER_STOPPED
    assert err.route == "/api/chat"
    assert ("content-type", "application/json; charset=utf-8") in err.headers
    # the connection is kept after a whole error answer, as httpx keeps it
    await stream_lines(upstream, chat(True))
    assert stub.state.recorder.total_connections == 1


async def test_a_stream_cut_midway_is_a_broken_connection(
    upstream: Upstream, stub: StubOllama
) -> None:
    stub.add_fault("cut", path="/api/chat", after=2)
    got: list[bytes] = []

    async def read() -> None:
        async with upstream.open(
            "POST", "/api/chat", body=chat(True), headers=JSON, lean=True
        ) as response:
            async for line in iter_lines(response):
                got.append(line)  # noqa: PERF401 (the lines before the cut count)

    with pytest.raises(UpstreamError) as raised:
        await read()
    assert len(got) == 2
    assert raised.value.kind is FailureKind.TRANSIENT
    assert raised.value.broken
    # the next job gets a fresh connection
    assert json.loads((await stream_lines(upstream, chat(True)))[-1])["done"] is True


async def test_a_silent_upstream_times_out_after_the_read_timeout(
    upstream: Upstream, stub: StubOllama, autojump_clock: trio.testing.MockClock
) -> None:
    stub.add_fault("hang", path="/api/chat")
    started = trio.current_time()
    with pytest.raises(UpstreamError) as raised:
        async with upstream.open(
            "POST", "/api/chat", body=chat(True), headers=JSON, read_timeout=7.0, lean=True
        ):
            pass
    assert raised.value.timed_out
    assert raised.value.kind is FailureKind.TRANSIENT
    assert trio.current_time() - started == pytest.approx(7.0, abs=0.5)


@pytest.mark.parametrize("stub_config", [StubConfig(token_delay=3600.0, tokens=4)])
async def test_a_cancelled_job_closes_its_upstream_request(
    upstream: Upstream, stub: StubOllama
) -> None:
    with trio.move_on_after(DEADLINE) as waited:
        async with trio.open_nursery() as nursery:

            async def cancel_once_it_streams() -> None:
                await stub.wait_until(lambda: bool(stub.requests_of("chat")))
                nursery.cancel_scope.cancel()

            nursery.start_soon(cancel_once_it_streams)
            await stream_lines(upstream, chat(True))
    assert not waited.cancelled_caught
    with trio.fail_after(DEADLINE):
        await stub.wait_until(lambda: stub.requests_of("chat")[0].cancelled)
    if upstream.lean is not None:
        assert not upstream.lean._idle
        assert upstream.lean._slots.value == worker_connections(1)


async def test_a_body_less_request_stays_on_httpx(stub: StubOllama) -> None:
    lean = RelayPool(stub.url, 1)
    async with default_client(stub.url, 1) as client:
        upstream = Upstream(client, lean=lean)
        async with upstream.open("GET", "/api/version", lean=True) as response:
            assert json.loads(await read_body(response))["version"]
    assert not lean._idle
    lean.close()


# -- iter_lines -----------------------------------------------------------------------------


class Chunks:
    """An answer whose body arrives in the given chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


async def lines_of(chunks: list[bytes]) -> list[bytes]:
    return [line async for line in iter_lines(Chunks(chunks))]  # type: ignore[arg-type]


async def test_lines_split_across_chunk_boundaries_are_joined() -> None:
    assert await lines_of([b'{"a"', b":1}\n{", b'"b":2', b"}\n"]) == [b'{"a":1}\n', b'{"b":2}\n']
    assert await lines_of([b"x", b"\n", b"\ny\n"]) == [b"x\n", b"\n", b"y\n"]


async def test_many_lines_in_one_chunk_come_one_by_one() -> None:
    lines = [b'{"n":%d}\n' % n for n in range(10_000)]
    assert await lines_of([b"".join(lines)]) == lines


async def test_a_line_bigger_than_a_chunk_comes_whole() -> None:
    big = b"x" * 1_000_000 + b"\n"
    chunks = [b"a\n" + big[:1000]] + [big[i : i + 1000] for i in range(1000, len(big), 1000)]
    assert await lines_of([*chunks, b"z"]) == [b"a\n", big, b"z"]


async def test_a_last_line_without_newline_comes_unless_blank() -> None:
    assert await lines_of([b"a\nb"]) == [b"a\n", b"b"]
    assert await lines_of([b"a\n", b"  "]) == [b"a\n"]
    assert await lines_of([]) == []


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
async def test_any_chunking_gives_the_lines_of_the_whole(body: bytes, cuts: list[int]) -> None:
    edges = sorted({0, len(body), *(c for c in cuts if c <= len(body))})
    chunks = [body[a:b] for a, b in itertools.pairwise(edges)]
    whole = [part + b"\n" for part in body.split(b"\n")[:-1]]
    tail = body.split(b"\n")[-1]
    expected = whole + ([tail] if tail.strip() else [])
    assert await lines_of(chunks) == expected


@pytest.mark.parametrize(
    ("url", "lean"),
    [
        ("http://127.0.0.1:11434", True),
        ("https://ollama.example", False),
        # httpx sends the credentials as Basic auth; the lean pool would not
        ("http://user:secret@127.0.0.1:11434", False),
    ],
)
async def test_only_a_plain_http_upstream_without_credentials_gets_lean_pools(
    url: str, lean: bool
) -> None:
    async with contextlib.AsyncExitStack() as clients:
        assert (_lean_pool(clients, url, 4) is not None) is lean
