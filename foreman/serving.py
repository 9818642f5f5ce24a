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

`serve` is hypercorn's, run with `IsolatedTCPServer` as the connection handler.
"""

from __future__ import annotations

import logging

import hypercorn.trio.run
import trio
from hypercorn.events import Event, Updated
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger("foreman.serving")


class IsolatedTCPServer(TCPServer):
    """One HTTP connection; an error in it ends it and nothing else, and it closes when
    it has been idle too long or the server stops."""

    _idle_scope: trio.CancelScope | None = None

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
            scope = trio.CancelScope()
            self._idle_scope = scope
            self._task_group.spawn(self._close_when_idle, scope)

    async def _close_when_idle(self, scope: trio.CancelScope) -> None:
        with scope:
            await self._idle_timeout()

    async def _close(self) -> None:
        # shut the socket even when the caller is a request task being cancelled
        with trio.CancelScope(shield=True):
            await super()._close()

    async def run(self) -> None:
        try:
            await super().run()
        except Exception as exc:
            if _only(exc, trio.BusyResourceError):
                # the known race: a client gone mid-request; nothing to act on
                log.debug("a connection ended on hypercorn's send race: %r", exc)
            else:
                log.warning("a connection ended on an error in the HTTP server", exc_info=exc)


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(inner, kind) for inner in exc.exceptions)
    return isinstance(exc, kind)


# worker_serve builds each connection's handler from this module attribute
hypercorn.trio.run.TCPServer = IsolatedTCPServer  # type: ignore[attr-defined]

__all__ = ["IsolatedTCPServer", "serve"]
