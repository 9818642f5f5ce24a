"""The lean relay's HTTP/1.1 client (foreman/relay_client.py) over real sockets: against the
stub Ollama, and against a scripted upstream that misbehaves on purpose."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio
import trio.testing

from foreman.relay_client import RelayPool, RelayResponse
from foreman.retry import FailureKind
from foreman.stub import StubConfig, StubOllama
from foreman.upstream import Upstream, UpstreamError

EMBED = json.dumps({"model": "nomic-embed-text", "input": "a"}).encode()
JSON = [(b"content-type", b"application/json")]
DEADLINE = 30


@pytest.fixture
def stub_config() -> StubConfig:
    return StubConfig()


@pytest.fixture
async def stub(nursery: trio.Nursery, stub_config: StubConfig) -> StubOllama:
    server = StubOllama(stub_config)
    await nursery.start(server.serve)
    return server


async def embed(pool: RelayPool) -> RelayResponse:
    return await pool.send("POST", b"/api/embed", JSON, EMBED)


async def embed_whole(pool: RelayPool) -> bytes:
    response = await embed(pool)
    try:
        return await response.aread()
    finally:
        await response.aclose()


async def test_sequential_requests_share_one_kept_alive_connection(stub: StubOllama) -> None:
    pool = RelayPool(stub.url, 4)
    for _ in range(5):
        response = await embed(pool)
        assert response.status_code == 200
        assert response.header(b"content-length") is not None
        body = await response.aread()
        assert len(body) == int(response.header(b"content-length") or b"")
        assert json.loads(body)["embeddings"]
        await response.aclose()
    assert stub.state.recorder.total_connections == 1
    pool.close()


@pytest.mark.parametrize("stub_config", [StubConfig(embed_delay=1.0)])
async def test_the_connection_used_last_is_taken_first(
    stub: StubOllama, autojump_clock: trio.testing.MockClock
) -> None:
    pool = RelayPool(stub.url, 8)

    async def one() -> None:
        response = await embed(pool)
        await response.aread()
        await response.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert stub.state.recorder.total_connections == 3
    newest = pool._idle[-1]
    stub.reset_record()
    for _ in range(4):
        await one()
    # every request went on one connection, the one that went idle last, and the others
    # stayed idle beneath it
    assert {entry.connection for entry in stub.requests_of("embed")} == {
        stub.requests_of("embed")[0].connection
    }
    assert pool._idle[-1] is newest
    assert len(pool._idle) == 3
    pool.close()


async def test_a_streamed_answer_is_read_chunk_by_chunk_and_its_connection_kept(
    stub: StubOllama,
) -> None:
    pool = RelayPool(stub.url, 4)
    body = json.dumps({"model": "llama3", "prompt": "hi"}).encode()
    for _ in range(2):
        response = await pool.send("POST", b"/api/generate", JSON, body)
        assert response.status_code == 200
        assert response.header(b"content-length") is None
        assert response.header(b"transfer-encoding") == b"chunked"
        lines = b"".join([chunk async for chunk in response.aiter_raw()]).splitlines()
        assert json.loads(lines[-1])["done"] is True
        await response.aclose()
    assert stub.state.recorder.total_connections == 1
    pool.close()


async def test_an_idle_connection_the_server_reset_is_replaced_before_the_request_goes(
    stub: StubOllama,
) -> None:
    pool = RelayPool(stub.url, 4)
    first = await embed(pool)
    await first.aread()
    await first.aclose()
    stub.stop_listening(drop_connections=True)
    await stub.start_listening()
    with trio.fail_after(DEADLINE):
        await stub.wait_until(lambda: stub.open_connections == 0)
    second = await embed(pool)
    assert second.status_code == 200
    await second.aread()
    await second.aclose()
    assert stub.state.recorder.total_connections == 2
    pool.close()


@pytest.mark.parametrize("stub_config", [StubConfig(embed_delay=3600.0)])
async def test_a_request_given_up_closes_its_connection_and_the_server_sees_it(
    stub: StubOllama,
) -> None:
    pool = RelayPool(stub.url, 1)
    with trio.move_on_after(DEADLINE) as waited:
        async with trio.open_nursery() as nursery:

            async def give_up_when_it_runs() -> None:
                await stub.wait_until(lambda: bool(stub.requests_of("embed")))
                nursery.cancel_scope.cancel()

            nursery.start_soon(give_up_when_it_runs)
            await embed(pool)
    assert not waited.cancelled_caught
    with trio.fail_after(DEADLINE):
        await stub.wait_until(lambda: stub.requests_of("embed")[0].cancelled)
    # its slot is free again, and no broken connection was kept
    assert not pool._idle
    assert pool._slots.value == 1
    pool.close()


async def test_a_silent_upstream_times_out_when_a_read_timeout_is_asked(
    stub: StubOllama, autojump_clock: trio.testing.MockClock
) -> None:
    stub.add_fault("hang", path="/api/embed")
    pool = RelayPool(stub.url, 1)
    started = trio.current_time()
    with pytest.raises(httpx.ReadTimeout):
        await pool.send("POST", b"/api/embed", JSON, EMBED, read_timeout=7.0)
    assert trio.current_time() - started == pytest.approx(7.0, abs=0.5)
    assert pool._slots.value == 1
    pool.close()


async def test_a_refused_connection_is_an_outage_and_a_bad_target_never_leaves(
    stub: StubOllama,
) -> None:
    pool = RelayPool(stub.url, 1)
    upstream = Upstream(httpx.AsyncClient(base_url=stub.url), lean=pool)
    with pytest.raises(httpx.InvalidURL):
        await upstream.relay("GET", "http://elsewhere/api/tags", body=b"", headers=[])
    with pytest.raises(httpx.InvalidURL):
        await upstream.relay("GET", "/api/../x", body=b"", headers=[])
    assert stub.state.recorder.total_connections == 0
    stub.stop_listening()
    with pytest.raises(UpstreamError) as raised:
        await upstream.relay("POST", "/api/embed", body=EMBED, headers=JSON)
    assert raised.value.kind is FailureKind.OUTAGE
    assert pool._slots.value == 1
    pool.close()
    await upstream.client.aclose()


# -- a scripted upstream --------------------------------------------------------------------

Script = Callable[[trio.SocketStream, bytes], Awaitable[None]]


async def read_request(stream: trio.SocketStream, pending: bytearray) -> bytes | None:
    """One request's bytes (head and Content-Length body), None at the end of the stream."""
    while b"\r\n\r\n" not in pending:
        data = await stream.receive_some()
        if not data:
            return None
        pending += data
    head, _, _ = bytes(pending).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    end = len(head) + 4 + length
    while len(pending) < end:
        pending += await stream.receive_some()
    request = bytes(pending[:end])
    del pending[:end]
    return request


Launch = Callable[[Script], Awaitable[str]]


@pytest.fixture
def scripted(nursery: trio.Nursery) -> Launch:
    """Starts an upstream that answers each request with a script; gives its URL."""

    async def serve(script: Script, task_status: trio.TaskStatus[str]) -> None:
        async def handle(stream: trio.SocketStream) -> None:
            pending = bytearray()
            async with stream:
                try:
                    while (request := await read_request(stream, pending)) is not None:
                        await script(stream, request)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the client hung up first: its side is what the test asserts

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(f"http://127.0.0.1:{port}")

    async def launch(script: Script) -> str:
        url: str = await nursery.start(serve, script)
        return url

    return launch


def answer(status: bytes, headers: bytes, body: bytes) -> Script:
    async def script(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 " + status + b"\r\n" + headers + b"\r\n" + body)

    return script


async def test_what_goes_upstream_is_the_upstreams_host_and_the_checked_target(
    scripted: Launch,
) -> None:
    seen: list[bytes] = []

    async def record(stream: trio.SocketStream, request: bytes) -> None:
        seen.append(request)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    url = await scripted(record)
    pool = RelayPool(url + "/base", 1)
    upstream = Upstream(httpx.AsyncClient(base_url=url + "/base"), lean=pool)
    headers = [(b"X-Name", b"caf\xc3\xa9"), (b"content-type", b"application/json")]
    response = await upstream.relay("POST", "/api/embed?x=%2F", body=EMBED, headers=headers)
    assert await response.aread() == b"{}"
    await response.aclose()
    port = url.rsplit(":", 1)[1].encode()
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /base/api/embed?x=%2F HTTP/1.1"
    assert lines[1:] == [
        b"host: 127.0.0.1:" + port,
        b"X-Name: caf\xc3\xa9",
        b"content-type: application/json",
        b"content-length: " + str(len(EMBED)).encode(),
    ]
    assert body == EMBED
    pool.close()
    await upstream.client.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_used_again(
    scripted: Launch,
) -> None:
    connections = 0

    async def once_then_close(stream: trio.SocketStream, request: bytes) -> None:
        nonlocal connections
        connections += 1
        # keep-alive as far as the client can tell, then closed while it is idle
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await stream.aclose()

    pool = RelayPool(await scripted(once_then_close), 1)
    for _ in range(3):
        with trio.fail_after(DEADLINE):
            response = await embed(pool)
            assert await response.aread() == b"ok"
            await response.aclose()
        # the close reaches the client before its next request
        with trio.fail_after(DEADLINE):
            await trio.lowlevel.wait_readable(pool._idle[-1].stream.socket)
    assert connections == 3
    pool.close()


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_large_bodies_arrive_whole_in_either_framing(scripted: Launch, framing: str) -> None:
    big = bytes(range(256)) * 20_000  # 5 MB
    if framing == "length":
        script = answer(b"200 OK", f"Content-Length: {len(big)}\r\n".encode(), big)
    else:
        pieces = [big[i : i + 77_777] for i in range(0, len(big), 77_777)]
        chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces)
        script = answer(b"200 OK", b"Transfer-Encoding: chunked\r\n", chunked + b"0\r\n\r\n")
    pool = RelayPool(await scripted(script), 1)
    for _ in range(2):
        response = await embed(pool)
        assert await response.aread() == big
        await response.aclose()
    assert len(pool._idle) == 1
    pool.close()


MALFORMED = {
    "not http": b"HELLO THERE\r\n\r\n",
    "bad status line": b"HTTP/1.1 two hundred OK\r\nContent-Length: 0\r\n\r\n",
    "bad header line": b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 0\r\n\r\n",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "negative length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n",
    "a head without end": b"HTTP/1.1 200 OK\r\nX-Junk: " + b"x" * 300_000,
    "body cut short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
    "closed at once": b"",
}


@pytest.mark.parametrize("reply", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_hostile_upstream_gets_a_clean_error_and_frees_its_connection(
    scripted: Launch, reply: bytes
) -> None:
    async def hostile(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(reply)
        await stream.aclose()

    pool = RelayPool(await scripted(hostile), 1)
    for _ in range(2):  # the pool's one slot is free again after each failure
        with trio.fail_after(DEADLINE), pytest.raises(httpx.TransportError):
            await embed_whole(pool)
    assert not pool._idle
    assert pool._slots.value == 1
    pool.close()


async def test_an_answer_closed_before_its_end_closes_its_connection(scripted: Launch) -> None:
    hung_up = trio.Event()

    async def endless(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
        )
        if not await stream.receive_some():
            hung_up.set()

    pool = RelayPool(await scripted(endless), 1)
    with trio.fail_after(DEADLINE):
        response = await embed(pool)
        assert await response.aiter_raw().__anext__() == b"first"
        await response.aclose()
        await hung_up.wait()
    assert not pool._idle
    assert pool._slots.value == 1
    pool.close()


async def test_an_answer_saying_close_ends_its_connection(scripted: Launch) -> None:
    connections = 0

    async def closing(stream: trio.SocketStream, request: bytes) -> None:
        nonlocal connections
        connections += 1
        # says it closes, and leaves that to the client
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        )

    pool = RelayPool(await scripted(closing), 1)
    for _ in range(2):
        with trio.fail_after(DEADLINE):
            assert await embed_whole(pool) == b"ok"
    assert connections == 2
    assert not pool._idle
    pool.close()


async def test_a_reset_connection_that_looked_idle_is_replaced_when_nothing_was_sent(
    stub: StubOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's reset arrives between the check of an idle connection and the
    request: the first write fails, so no byte went out, and a fresh connection
    carries the request."""
    pool = RelayPool(stub.url, 4)
    assert json.loads(await embed_whole(pool))["embeddings"]
    stub.stop_listening(drop_connections=True)
    await stub.start_listening()
    with trio.fail_after(DEADLINE):
        await stub.wait_until(lambda: stub.open_connections == 0)
        await trio.lowlevel.wait_readable(pool._idle[-1].stream.socket)
    monkeypatch.setattr(type(pool._idle[-1].stream.socket), "is_readable", lambda self: False)
    assert json.loads(await embed_whole(pool))["embeddings"]
    assert stub.state.recorder.total_connections == 2
    pool.close()
