"""Which upstreams this replica drives, when several foremen share one PostgreSQL queue.

Each upstream has a lease, and so has the janitor (see `foreman.store.pg_leases`): whoever
holds it runs that part, the others do not. `LeaseKeeper` tries the free leases every
`poll` seconds, and runs each lease's part (an upstream's worker, the janitor) for as long
as it holds it. The same trip to the database is the replica's heartbeat: when it says
the connection is lost, every lease went with the session, so every part is stopped
before the keeper opens a new session and tries again. A replica that dies frees its
leases with its session, and a survivor takes them at its next try.

Between tries the keeper also reads how the upstreams it does not drive stand (held or
not, their resident model, their running jobs) into the fleet, so this replica's
placement and relayed routes see the whole fleet, a second or so late.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs
import trio

from foreman.fleet import Fleet, Member
from foreman.status import LeaseStatus
from foreman.store import (
    JANITOR,
    DatabaseLost,
    Store,
    StoreError,
    StoreUnwritable,
    UpstreamView,
    janitor_key,
    upstream_key,
)

log = logging.getLogger("foreman.leases")

# how often free leases are tried (a dead replica's upstreams move within about this)
LEASE_POLL = 1.0
# bound on freeing a lease (a shielded write: the session may be on its way out)
RELEASE_SECONDS = 5.0
# bounds on the pause between attempts to open a new session
RECONNECT_MIN = 0.1
RECONNECT_MAX = 5.0

# what a lease's holder runs, for as long as it holds it; it returns only if it fails
Part = Callable[[], Awaitable[None]]


@attrs.define(eq=False)
class _Held:
    scope: trio.CancelScope
    ended: trio.Event = attrs.Factory(trio.Event)


class LeaseKeeper:
    """This replica's leases and the parts it runs under them.

    `parts` maps each upstream's name to what runs while its lease is held (its worker);
    `janitor` runs while the janitor's lease is held.
    """

    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        parts: Mapping[str, Part],
        janitor: Part,
        *,
        poll: float = LEASE_POLL,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.poll = poll
        self._parts: dict[str, Part] = {**parts, JANITOR: janitor}
        self._keys = {name: upstream_key(name) for name in parts}
        self._keys[JANITOR] = janitor_key()
        self._held: dict[str, _Held] = {}
        # tasks refreshing the model list of an upstream another replica drives
        self._refreshing: set[str] = set()
        # False once shutdown began: no lease is taken any more
        self.taking = True

    @property
    def upstreams(self) -> tuple[str, ...]:
        """The upstreams this replica drives now, in configuration order."""
        return tuple(m.name for m in self.fleet if m.name in self._held)

    @property
    def janitor(self) -> bool:
        return JANITOR in self._held

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    await self._try(nursery)
                except DatabaseLost as exc:
                    log.warning("%s; every lease went with it: stopping what ran under them", exc)
                    await self._lose_all()
                    await self._reconnect()
                    continue
                except StoreError as exc:
                    # the server refuses now (too many connections, a standby): next round
                    log.warning("leases: %s; trying again", exc)
                except Exception:
                    # whatever else the driver says, the daemon goes on: next round
                    log.exception("leases: the round failed; trying again")
                await trio.sleep(self.poll)

    async def _try(self, nursery: trio.Nursery) -> None:
        wanted = [key for name, key in self._keys.items() if self.taking and name not in self._held]
        taken = set(await self.store.try_leases(wanted))
        for name, key in self._keys.items():
            if key in taken:
                self._start(nursery, name)
        others = [m.name for m in self.fleet if m.name not in self._held]
        if others:
            views = await self.store.upstream_views(others)
            for view in views:
                member = self.fleet.by_name(view.name)
                if member is not None and view.name not in self._held:
                    self._see(nursery, member, view)

    def _start(self, nursery: trio.Nursery, name: str) -> None:
        held = self._held[name] = _Held(trio.CancelScope())
        log.info(
            "took the lease of %s",
            "the janitor" if name == JANITOR else f"upstream {name}",
        )
        nursery.start_soon(self._run_part, name, held)

    async def _run_part(self, name: str, held: _Held) -> None:
        try:
            with held.scope:
                await self._parts[name]()
                log.error("the part run under the lease of %s ended; letting it go", name)
        except Exception:
            log.exception("the part run under the lease of %s failed; letting it go", name)
        finally:
            held.ended.set()
        if self._held.get(name) is held:
            # it stopped by itself while the lease is still ours: free it for any replica
            del self._held[name]
            with trio.move_on_after(RELEASE_SECONDS, shield=True):
                # a failure: the session is gone, and the lease with it
                with contextlib.suppress(StoreError):
                    await self.store.release_lease(self._keys[name])

    def _see(self, nursery: trio.Nursery, member: Member, view: UpstreamView) -> None:
        """Another replica's upstream as the database shows it."""
        member.online = view.held
        member.running = view.running
        member.loading_key = view.loading_key
        member.loading = view.loading_key is not None
        member.resident = view.loading_key or view.resident
        due = view.held and member.tags_due(trio.current_time())
        if due and member.name not in self._refreshing:
            self._refreshing.add(member.name)
            nursery.start_soon(self._refresh_tags, member)

    async def _refresh_tags(self, member: Member) -> None:
        try:
            await member.refresh_tags()
        finally:
            self._refreshing.discard(member.name)

    async def _lose_all(self) -> None:
        """Stop every part run under a lease, and wait until each has stopped."""
        held, self._held = list(self._held.values()), {}
        for one in held:
            one.scope.cancel()
        for one in held:
            await one.ended.wait()
        for member in self.fleet:
            member.online = False

    async def _reconnect(self) -> None:
        pause = RECONNECT_MIN
        while True:
            try:
                await self.store.reconnect()
            except StoreError as exc:
                log.warning("cannot reach the database: %s; trying again in %.1fs", exc, pause)
                await trio.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX)
                continue
            log.info("connected to the database again; taking leases")
            return

    def stop_taking(self) -> None:
        """Shutdown began: take no more leases (the ones held are kept until
        `release_all`, so the upstreams' running jobs finish here)."""
        self.taking = False

    def status(self) -> LeaseStatus:
        return LeaseStatus(self.upstreams, self.janitor)

    async def release_all(self) -> None:
        """Stop every part and free the leases (a graceful stop: the others take over
        at once rather than when the session ends)."""
        self.taking = False
        names = list(self._held)
        await self._lose_all()
        with trio.move_on_after(RELEASE_SECONDS, shield=True):
            for name in names:
                try:
                    await self.store.release_lease(self._keys[name])
                except StoreError:
                    return


async def sweep_orphans(store: Store, configured: Sequence[str], interval: float = 60.0) -> None:
    """Put back the jobs left running on an upstream no replica here is configured with
    (its configuration changed, or it is gone): each such upstream's lease is taken for
    the put-back, so a replica that does drive it is never undercut. Run by the janitor's
    holder."""
    known = set(configured)
    while True:
        try:
            for name in await store.running_upstreams():
                if name in known:
                    continue
                key = upstream_key(name)
                if not await store.try_leases([key]):
                    continue  # a replica configured with it drives it
                try:
                    for job in await store.recover_interrupted(name):
                        log.warning(
                            "job %s was left %s on upstream %s, which no replica drives; now %s",
                            job.id,
                            "running",
                            name,
                            job.state.value,
                        )
                finally:
                    with trio.move_on_after(RELEASE_SECONDS, shield=True):
                        await store.release_lease(key)
        except StoreUnwritable as exc:
            log.warning("janitor: %s; trying again later", exc)
        await trio.sleep(interval)
