"""Hypercorn's trio server, with two of its connection handler's faults mended.

1. A connection's failure is kept to that connection. Hypercorn 0.18's trio
`TCPServer.run` lets some errors escape a connection's task: when
a client sends less body than its Content-Length and closes while the answer is being
written, hypercorn's error answer races the connection's close and raises
`trio.BusyResourceError` (see pgjones/hypercorn#203). The error reaches
`trio.serve_listeners`' nursery and ends the whole server, so one client closing at the
wrong moment stopped foreman. Found by the hostile-input suite (tests/fuzz).

`IsolatedTCPServer.run` ends only its own connection on such an error (the connection
is already closed by then) and logs it. Cancellation still propagates: a group holding
`trio.Cancelled` is not an `Exception`.

2. An idle keep-alive connection is closed after `keep_alive_timeout`, and at once when
the server stops. Hypercorn starts a connection's idle timer from inside the task that
finishes the response, with `nursery.start`; under Quart-Trio that task belongs to the
request's own nursery, which Quart cancels as soon as the request is done, and the
cancellation reaches the new timer before it leaves the caller's scope. With the timer
gone, an idle connection was never closed: not after the keep-alive timeout (a client
that never hangs up kept its socket for as long as foreman ran) and not at shutdown
(each one held the exit for the whole graceful timeout). The timer is started here with
`start_soon`, which runs it in the connection's nursery alone, and nothing on the way
there can be interrupted by the request's cancellation.

3. A connection is closed after an answer that must end it: one to an HTTP/1.0 request,
or to a request that said `Connection: close`. Hypercorn closes such a connection from
the task that finishes the response, which under Quart-Trio is again the request's own,
cancelled as soon as the request is done; the close met that cancellation at its first
checkpoint (before the socket was shut) and the connection stayed open. An HTTP/1.0
answer without a length ends only when the connection does, so a client reading to the
end (nginx's default `proxy_pass`, ApacheBench, health checkers) hung until its own
timeout. The close here is shielded: it does not wait on anything, so the shield only
lets it finish.

4. Connections are capped and a request's head has a deadline (`ServerConfig`). At
`max_connections`, a new connection takes the place of the one idle longest between
requests; with none idle it is answered 503 with `Retry-After` and closed at once, so
foreman never runs out of file descriptors (see `foreman.connections`). A new
connection must deliver its first request's head within `header_timeout`, far shorter
than the keep-alive timeout that Hypercorn would otherwise apply: connections opened
and left silent are closed within seconds and their places go to others. A connection
the client closed is let go at once, not when its idle timer would have run out.

`serve` is hypercorn's, run with `IsolatedTCPServer` as the connection handler.
"""

from __future__ import annotations

import contextlib
import logging

import hypercorn.trio.run
import trio
from hypercorn.config import Config
from hypercorn.events import Event, Updated
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

from foreman.connections import ConnectionCount

log = logging.getLogger("foreman.serving")

# the answer to a connection beyond the cap, sent before closing it
_OVER_CAP_BODY = b'{"error":"foreman has too many connections open; try again shortly"}\n'
OVER_CAP = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
    b"Content-Type: application/json\r\nConnection: close\r\n"
    + f"Content-Length: {len(_OVER_CAP_BODY)}\r\n\r\n".encode()
    + _OVER_CAP_BODY
)
# how long a refused connection may take to be told so
OVER_CAP_SEND_SECONDS = 1.0


class ServerConfig(Config):
    """Hypercorn's configuration with foreman's connection limits (one per server)."""

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        super().__init__()
        self.connections = ConnectionCount(max_connections)
        self.header_timeout = header_timeout


class IsolatedTCPServer(TCPServer):
    """One HTTP connection; an error in it ends it and nothing else, and it closes when
    it has been idle too long or the server stops."""

    _idle_scope: trio.CancelScope | None = None
    # an answer went out: from now on, silence is keep-alive, not a slow head
    _answered = False

    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, Updated):
            await super().protocol_send(event)
            return
        # the timer hypercorn started when the connection opened; shielded, since the
        # caller may be a request task whose scope Quart is cancelling right now
        with trio.CancelScope(shield=True):
            await self.idle_task.stop()
        if self._idle_scope is not None:
            self._idle_scope.cancel()
            self._idle_scope = None
        if event.idle:
            self._answered = True
            scope = trio.CancelScope()
            self._idle_scope = scope
            self._task_group.spawn(self._close_when_idle, scope)

    async def _close_when_idle(self, scope: trio.CancelScope) -> None:
        with scope:
            await self._idle_timeout()

    async def _read_data(self) -> None:
        await super()._read_data()
        # the client is gone: its timer would otherwise hold the connection (and its
        # place under the cap) until it ran out, up to the keep-alive timeout
        with trio.CancelScope(shield=True):
            await self.idle_task.stop()
        if self._idle_scope is not None:
            self._idle_scope.cancel()
            self._idle_scope = None

    async def _idle_timeout(self) -> None:
        # hypercorn's timer, with the head deadline until the first answer went out; a
        # connection idle between requests may be closed early to let a new one in
        header_timeout: float | None = getattr(self.config, "header_timeout", None)
        waiting_for_head = not self._answered and header_timeout is not None
        timeout: float = self.config.keep_alive_timeout
        if waiting_for_head and header_timeout is not None:
            timeout = header_timeout
        count: ConnectionCount | None = getattr(self.config, "connections", None)
        with trio.move_on_after(timeout) as wait:
            if count is not None and not waiting_for_head:
                count.idle(self, wait)
            try:
                await self.context.terminated.wait()
            finally:
                if count is not None:
                    count.busy(self)
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    async def _close(self) -> None:
        # shut the socket even when the caller is a request task being cancelled
        with trio.CancelScope(shield=True):
            await super()._close()

    async def run(self) -> None:
        count: ConnectionCount | None = getattr(self.config, "connections", None)
        if count is not None and not count.take():
            await self._refuse()
            return
        try:
            await super().run()
        except Exception as exc:
            if _only(exc, trio.BusyResourceError):
                # the known race: a client gone mid-request; nothing to act on
                log.debug("a connection ended on hypercorn's send race: %r", exc)
            else:
                log.warning("a connection ended on an error in the HTTP server", exc_info=exc)
        finally:
            if count is not None:
                count.release(self)

    async def _refuse(self) -> None:
        """Tell a connection beyond the cap to come back later, and close it."""
        with trio.move_on_after(OVER_CAP_SEND_SECONDS):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_all(OVER_CAP)
        await self._close()


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(inner, kind) for inner in exc.exceptions)
    return isinstance(exc, kind)


# worker_serve builds each connection's handler from this module attribute
hypercorn.trio.run.TCPServer = IsolatedTCPServer  # type: ignore[attr-defined]

__all__ = ["IsolatedTCPServer", "ServerConfig", "serve"]
