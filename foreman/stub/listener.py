"""The stub's listening socket and open connections, which can go down and come back.

"Down" means what a dead Ollama looks like from outside: the listening socket is closed, so
connections are refused, and open connections are reset. Coming back binds the same port again.
Every task here (accept loop, connections, the timer ending a refusal) runs in the nursery that
`run` owns, so cancelling `run` stops them all.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import socket
from collections.abc import Callable

import trio

from .http import Connection, Handler, serve_connection
from .record import Recorder

log = logging.getLogger("foreman.stub")


class Listener:
    """Accepts connections for a handler; `stop`, `start` and `refuse` simulate outages."""

    def __init__(self, handler: Handler, recorder: Recorder) -> None:
        self._handler = handler
        self._recorder = recorder
        self.host = "127.0.0.1"
        self.port = 0
        self.loopback = True
        self.refusing = False
        self._nursery: trio.Nursery | None = None
        self._socket: trio.SocketListener | None = None
        self._accept_scope: trio.CancelScope | None = None
        self._refusal: trio.CancelScope | None = None
        self._connections: set[Connection] = set()
        self._ids = itertools.count(1)

    @property
    def listening(self) -> bool:
        return self._socket is not None

    async def run(self, host: str, port: int, ready: Callable[[int], None]) -> None:
        """Listen and serve until cancelled; `ready` gets the bound port once connections work."""
        if self._nursery is not None:
            raise RuntimeError("this stub is already serving")
        self.host = host
        sock = await self._bind(port)  # outside the nursery, so OSError reaches the caller as is
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                self._install(sock)
                ready(self.port)
                await trio.sleep_forever()
            finally:
                self._nursery = None
                self._close_socket()

    def stop(self, *, drop_connections: bool = True) -> None:
        """Refuse new connections; with `drop_connections`, reset the open ones too.

        Connections whose latest request was a control request survive, so a harness can
        still talk to a stub that is "down". A pending timed refusal is cancelled.
        """
        self._cancel_refusal()
        self._close_socket()
        if drop_connections:
            for conn in list(self._connections):
                if not conn.control:
                    conn.drop()
        self._recorder.changed()

    async def start(self) -> None:
        """Listen again on the same port; ends any refusal."""
        self._cancel_refusal()
        self.refusing = False
        if self._socket is None:
            if self._nursery is None:
                raise RuntimeError("the stub is not serving; start it with nursery.start")
            self._install(await self._bind(self.port))

    def refuse(self, seconds: float | None) -> None:
        """Go down now and come back after `seconds` (None: only when told to)."""
        self.stop()
        self.refusing = True
        if seconds is not None:
            self.reopen_after(seconds)

    def reopen_after(self, seconds: float) -> None:
        self._cancel_refusal()
        if self._nursery is None:
            return
        scope = trio.CancelScope()
        self._refusal = scope
        self._nursery.start_soon(self._reopen, seconds, scope)

    def _cancel_refusal(self) -> None:
        if self._refusal is not None:
            self._refusal.cancel()
            self._refusal = None

    async def _reopen(self, seconds: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(seconds)
            while self._socket is None:
                try:
                    self._install(await self._bind(self.port))
                except OSError as exc:  # someone took the port meanwhile: keep trying
                    log.warning("stub could not listen again on port %s: %s", self.port, exc)
                    await trio.sleep(0.1)
            self.refusing = False
        if self._refusal is scope:
            self._refusal = None

    async def _bind(self, port: int) -> trio.socket.SocketType:
        infos = await trio.socket.getaddrinfo(
            self.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = trio.socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await sock.bind(address)
            sock.listen(1024)
        except BaseException:
            sock.close()
            raise
        return sock

    def _install(self, sock: trio.socket.SocketType) -> None:
        assert self._nursery is not None
        bound = sock.getsockname()
        self.port = bound[1]
        try:
            self.loopback = ipaddress.ip_address(bound[0].split("%", 1)[0]).is_loopback
        except ValueError:
            self.loopback = False
        self._socket = trio.SocketListener(sock)
        self._accept_scope = trio.CancelScope()
        self._nursery.start_soon(self._accept, self._socket, self._accept_scope)
        self._recorder.changed()

    def _close_socket(self) -> None:
        if self._accept_scope is not None:
            self._accept_scope.cancel()
            self._accept_scope = None
        if self._socket is not None:
            self._socket.socket.close()
            self._socket = None

    async def _accept(self, listener: trio.SocketListener, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                try:
                    stream = await listener.accept()
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return
                except OSError as exc:  # e.g. out of file descriptors: back off, keep going
                    log.warning("stub accept failed: %s", exc)
                    await trio.sleep(0.05)
                    continue
                assert self._nursery is not None
                self._nursery.start_soon(self._serve, Connection(stream, next(self._ids)))

    async def _serve(self, conn: Connection) -> None:
        self._connections.add(conn)
        self._recorder.connection_opened()
        try:
            await serve_connection(conn, self._handler)
        finally:
            self._connections.discard(conn)
            self._recorder.connection_closed()
