"""Idle keep-alive connections: closed after the keep-alive timeout and at shutdown.

Regression: under Quart-Trio, Hypercorn's idle timer for a connection was cancelled
together with the request that had just finished, so an idle connection was never
closed: not after `keep_alive_timeout`, and at shutdown only when the graceful timeout
ran out. The server here has a graceful timeout far beyond the tests' deadlines, so
only a connection closed for the right reason passes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio
from hypercorn.config import Config
from quart_trio import QuartTrio

from foreman.config import Settings
from foreman.serving import serve

# longer than any deadline below: a close that waited for it fails the test
GRACEFUL = 600.0
DEADLINE = 60.0


def tiny_app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.route("/")
    async def index() -> str:
        return "ok"

    return app


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[tuple[int, trio.Event, Config]]:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = GRACEFUL
    config.keep_alive_timeout = 75
    config.accesslog = None
    stop = trio.Event()
    binds = await nursery.start(partial(serve, tiny_app(), config, shutdown_trigger=stop.wait))
    port = int(binds[0].rsplit(":", 1)[1])
    yield port, stop, config
    stop.set()


async def idle_connection(port: int) -> trio.SocketStream:
    """A connection that made one request, read the whole answer, and stays open."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    answer = b""
    while not answer.endswith(b"ok"):
        answer += await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 200")
    return stream


async def closed_by_server(stream: trio.SocketStream) -> bool:
    with trio.fail_after(DEADLINE):
        return await stream.receive_some(4096) == b""


async def test_an_idle_connection_is_closed_when_the_server_stops(
    server: tuple[int, trio.Event, Config],
) -> None:
    port, stop, _ = server
    streams = [await idle_connection(port) for _ in range(3)]
    stop.set()
    for stream in streams:
        async with stream:
            assert await closed_by_server(stream)


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    server: tuple[int, trio.Event, Config],
) -> None:
    port, _, config = server
    config.keep_alive_timeout = 0.2
    stream = await idle_connection(port)
    async with stream:
        assert await closed_by_server(stream)
    # a connection in use is not idle: a second request on a fresh one still works
    again = await idle_connection(port)
    await again.aclose()


async def test_foreman_stops_without_waiting_for_idle_browser_connections(
    client_free_foreman: tuple[str, trio.Event],
) -> None:
    url, stopped = client_free_foreman
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = b""
        while b'"ok"' not in answer:
            answer += await stream.receive_some(4096)
        stopped.set()
        assert await closed_by_server(stream)


@pytest.fixture
async def client_free_foreman(
    nursery: trio.Nursery, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, trio.Event]]:
    """foreman with a graceful timeout beyond the deadline, stopped gracefully when the
    test sets the event."""
    from foreman import daemon
    from foreman.daemon import Control, run

    def patient(settings: Settings) -> Config:
        config = original(settings)
        config.graceful_timeout = GRACEFUL
        return config

    original = daemon.hypercorn_config
    monkeypatch.setattr(daemon, "hypercorn_config", patient)
    control = Control()
    url = await nursery.start(partial(run, settings, control=control))
    stop = trio.Event()

    async def stop_when_asked() -> None:
        await stop.wait()
        control.request_stop()

    nursery.start_soon(stop_when_asked)
    yield str(url), stop
    stop.set()
