"""Hypercorn's trio server, with a connection's failure kept to that connection.

Hypercorn 0.18's trio `TCPServer.run` lets some errors escape a connection's task: when
a client sends less body than its Content-Length and closes while the answer is being
written, hypercorn's error answer races the connection's close and raises
`trio.BusyResourceError` (see pgjones/hypercorn#203). The error reaches
`trio.serve_listeners`' nursery and ends the whole server, so one client closing at the
wrong moment stopped foreman. Found by the hostile-input suite (tests/fuzz).

`serve` is hypercorn's, run with a `TCPServer` whose `run` ends only its own connection
on such an error (the connection is already closed by then) and logs it. Cancellation
still propagates: a group holding `trio.Cancelled` is not an `Exception`.
"""

from __future__ import annotations

import logging

import hypercorn.trio.run
import trio
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger("foreman.serving")


class IsolatedTCPServer(TCPServer):
    """One HTTP connection; an error in it ends it and nothing else."""

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
