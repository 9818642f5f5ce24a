"""PostgreSQL's notifications (LISTEN/NOTIFY) delivered in Trio: `PgListener`.

A connection of its own, apart from the store's: the store's connection is busy on its
thread for whole statements, and a listener must read whenever the server speaks. The
listener waits on the connection's socket in Trio (no thread): when it turns readable,
libpq takes in what arrived and hands out the notifications it holds.

A notification sent while the listener was not connected is lost for good (the server
keeps none for a session that is gone): after a reconnect the listener says so
(`on_resync`), and whoever reads the notifications reads the state afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import psycopg
import trio
from psycopg import pq, sql

from foreman.store.errors import StoreError, first_line

log = logging.getLogger("foreman.store")

# the pause before the next attempt to reconnect: doubled each failure, up to the most
RECONNECT_FIRST = 0.1
RECONNECT_MOST = 5.0
# libpq's TCP keepalives: a network that died without a word (no FIN, no RST) is noticed
# within about idle + interval * count seconds, instead of never (a listener only reads)
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "connect_timeout": 10,
}

Handler = Callable[[str, int], None]


class PgListener:
    """LISTENs on the channels given to `listen` and hands each notification to its
    channel's handler, for as long as `run` runs."""

    def __init__(self, url: str, *, on_resync: Callable[[], None] = lambda: None) -> None:
        self._url = url
        self._on_resync = on_resync
        self._handlers: dict[str, Handler] = {}
        # the session listening now (None between connections), for tests and /ready
        self.conn: psycopg.Connection[Any] | None = None

    def listen(self, channel: str, handler: Handler) -> None:
        """Before `run`: `handler(payload, sender_backend_pid)` is called in Trio for each
        notification on `channel`; it must not block."""
        self._handlers[channel] = handler

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and LISTEN on every channel, then report started; then deliver
        notifications as they come. A lost connection is made again, after a pause that
        grows from 0.1 s to 5 s while attempts fail, and `on_resync` is called once the
        new session listens (notifications in between are lost). A failure of the first
        connection is a StoreError (one line, without the URL, which may hold a password).
        Cancelling closes the connection."""
        try:
            conn = await self._connect()
        except psycopg.Error as exc:
            raise StoreError(f"cannot listen on the database: {first_line(exc)}") from None
        task_status.started()
        pause = RECONNECT_FIRST
        while True:
            try:
                await self._deliver(conn)
            except psycopg.Error as exc:
                log.warning("listening on the database stopped: %s", first_line(exc))
            finally:
                self.conn = None
                conn.close()
            while True:
                await trio.sleep(pause)
                pause = min(pause * 2, RECONNECT_MOST)
                try:
                    conn = await self._connect()
                except psycopg.Error as exc:
                    log.warning("cannot listen on the database again yet: %s", first_line(exc))
                    continue
                break
            pause = RECONNECT_FIRST
            log.info("listening on the database again")
            self._on_resync()

    async def _connect(self) -> psycopg.Connection[Any]:
        """A new session that listens on every channel. Connecting blocks in libpq, so it
        runs on a thread (bounded by `connect_timeout`); the rest is quick."""
        conn = await trio.to_thread.run_sync(
            partial(psycopg.Connection.connect, self._url, autocommit=True, **KEEPALIVES)
        )
        try:
            # what the LISTEN's own round trip brings in goes to the handlers too
            conn.add_notify_handler(self._dispatch)
            for channel in self._handlers:
                await trio.to_thread.run_sync(
                    conn.execute, sql.SQL("LISTEN {}").format(sql.Identifier(channel))
                )
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        return conn

    async def _deliver(self, conn: psycopg.Connection[Any]) -> None:
        """Hand out notifications until the connection fails (a psycopg.Error)."""
        pgconn = conn.pgconn
        while True:
            # libpq may hold notifications already read from the socket: those first
            while (notify := pgconn.notifies()) is not None:
                self._dispatch(
                    psycopg.Notify(notify.relname.decode(), notify.extra.decode(), notify.be_pid)
                )
            if pgconn.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError("the connection to the database is lost")
            await trio.lowlevel.wait_readable(pgconn.socket)
            pgconn.consume_input()  # raises OperationalError once the server is gone

    def _dispatch(self, notify: psycopg.Notify) -> None:
        handler = self._handlers.get(notify.channel)
        if handler is not None:
            handler(notify.payload, notify.pid)


__all__ = ["KEEPALIVES", "PgListener"]
