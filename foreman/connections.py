"""How many connections foreman holds, so that it never runs out of file descriptors.

Every client connection is an open file. Past the process's open-file limit, accept(2)
fails with EMFILE: nobody is let in, not even a keyed client, until some connection
closes, and Trio logs a traceback for every failed accept, ten times a second. So:

- at start, the soft open-file limit is raised as far as the hard limit allows
  (`raise_open_file_limit`);
- client connections are capped below that limit (`connection_cap`), leaving a reserve
  for the database, the connections to Ollama, the log and the listening sockets;
- at the cap, a new connection takes the place of the connection that has been idle
  longest between two requests (keep-alive), as a reverse proxy reuses its idle
  connections: one cheap request per connection, then silence, must not hold every
  place for the whole keep-alive timeout. Only when no connection is idle is the new
  one answered 503 and closed at once (`ConnectionCount`, used by
  `serving.IsolatedTCPServer`);
- if accept fails anyway (another process used up the system's files), the failure is
  logged once a minute with a count, not ten times a second (`AcceptFailureThrottle`).
"""

from __future__ import annotations

import logging
import resource
import time

import trio

from foreman.config import ConfigError

# files foreman needs besides client connections and connections to Ollama: the
# database and its WAL and shared-memory files, the log, the listening sockets, the
# standard streams, Trio's own wake-up descriptors, the keys file, dashboard assets
RESERVED_FILES = 64
# the default cap never exceeds this, however high the limit: each connection costs
# memory, and more than this many clients at once is not what foreman is for
DEFAULT_CEILING = 4096
# the soft limit foreman asks for when the hard limit is higher (or unlimited)
WANTED_SOFT_LIMIT = 65536
# idle connections told to close but not closed yet: each still holds its file, so the
# connections let in in their place may exceed the cap by at most this (from the reserve)
RECLAIM_SLACK = 16


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit towards the hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_SOFT_LIMIT if hard == resource.RLIM_INFINITY else min(hard, WANTED_SOFT_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # kept as it was; the cap below follows whatever limit holds
    return WANTED_SOFT_LIMIT if soft == resource.RLIM_INFINITY else soft


def connection_cap(requested: int | None, soft_limit: int, upstream_connections: int) -> int:
    """The most client connections foreman holds at once: `requested` (the setting), or
    by default what the open-file limit leaves after the reserve. Raises ConfigError
    when the setting, or the limit itself, leaves no room."""
    room = soft_limit - RESERVED_FILES - upstream_connections
    if requested is None:
        if room < 1:
            raise ConfigError(
                f"the open-file limit ({soft_limit}) leaves no room for client connections; "
                f"raise it (LimitNOFILE) to at least {RESERVED_FILES + upstream_connections + 64}"
            )
        return min(room, DEFAULT_CEILING)
    if requested > room:
        raise ConfigError(
            f"max_connections={requested} is more than the open-file limit allows "
            f"({soft_limit} files, {soft_limit - room} of them reserved); "
            f"raise the limit (LimitNOFILE) or lower max_connections to {max(room, 1)}"
        )
    return requested


class ConnectionCount:
    """The client connections open now, against the cap; one per server.

    A connection idle between two requests registers the scope of its idle wait
    (`idle`); at the cap, `take` ends the wait of the one idle longest, which closes it,
    and lets the new connection in."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0
        self.refused = 0
        self.reclaimed = 0
        # idle connections, longest idle first, with the scope of their idle wait
        self._idle: dict[object, trio.CancelScope] = {}
        # connections told to close that have not let go of their place yet
        self._closing: set[object] = set()

    def take(self) -> bool:
        if self.open >= self.cap and not self._reclaim():
            self.refused += 1
            return False
        self.open += 1
        return True

    def release(self, connection: object) -> None:
        self.open -= 1
        self._idle.pop(connection, None)
        self._closing.discard(connection)

    def idle(self, connection: object, wait: trio.CancelScope) -> None:
        """`connection` waits for its next request; ending `wait` closes it."""
        self._idle[connection] = wait

    def busy(self, connection: object) -> None:
        """`connection` is no longer idle (a request came, or it is closing anyway)."""
        self._idle.pop(connection, None)

    def _reclaim(self) -> bool:
        if not self._idle or len(self._closing) >= RECLAIM_SLACK:
            return False
        connection = next(iter(self._idle))
        self._idle.pop(connection).cancel()
        self._closing.add(connection)
        self.reclaimed += 1
        return True


class AcceptFailureThrottle(logging.Filter):
    """Lets one accept failure a minute reach the log, without its traceback, with the
    number of failures held back since the last one."""

    def __init__(self, every: float = 60.0) -> None:
        super().__init__()
        self.every = every
        self._last: float | None = None
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every:
            self._held += 1
            return False
        held, self._held, self._last = self._held, 0, now
        record.exc_info = None
        record.exc_text = None
        if held:
            record.msg = f"{record.msg} (%d more such failures in the last %gs)"
            record.args = (*(record.args or ()), held, self.every)
        return True
