"""The lease keeper's rounds, against a store that answers as PostgreSQL's leases would
(`FakeLeases`: one holder per key, a session that can be lost), in virtual time.

The real advisory locks, sessions and failover are tested on PostgreSQL in tests/pg."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import httpx
import pytest
import trio

from foreman.fleet import Fleet, Member
from foreman.leases import LeaseKeeper
from foreman.store import DatabaseLost, Store, UpstreamView, janitor_key, upstream_key
from foreman.upstream import Upstream
from foreman.upstream_specs import UpstreamSpec

CLIENT = httpx.AsyncClient(base_url="http://127.0.0.1:9")


class FakeLeases:
    """What a replica's store says of leases: `others` are keys another session holds."""

    def __init__(self) -> None:
        self.held: set[int] = set()
        self.others: set[int] = set()
        self.lost = False
        self.fail_once: BaseException | None = None
        self.reconnects = 0
        self.released: list[int] = []
        self.views: dict[str, UpstreamView] = {}

    async def try_leases(self, keys: Sequence[int]) -> list[int]:
        await trio.lowlevel.checkpoint()
        if self.fail_once is not None:
            failure, self.fail_once = self.fail_once, None
            raise failure
        if self.lost:
            raise DatabaseLost("terminated by the test")
        taken = [k for k in keys if k not in self.others and k not in self.held]
        self.held.update(taken)
        return taken

    async def upstream_views(self, names: Sequence[str]) -> list[UpstreamView]:
        await trio.lowlevel.checkpoint()
        return [self.views.get(n, UpstreamView(n, False, None, None, 0)) for n in names]

    async def release_lease(self, key: int) -> bool:
        await trio.lowlevel.checkpoint()
        self.released.append(key)
        self.held.discard(key)
        return True

    async def reconnect(self) -> None:
        await trio.lowlevel.checkpoint()
        self.reconnects += 1
        self.lost = False
        self.held.clear()


def fleet_of(*names: str) -> Fleet:
    upstream = Upstream(CLIENT)
    return Fleet(
        tuple(
            Member(UpstreamSpec(url=f"http://{n}:11434", name=n), relay=upstream, probes=upstream)
            for n in names
        )
    )


class Parts:
    """The parts run under leases, recording their starts and ends."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.starts: list[str] = []
        self.ending: dict[str, trio.Event] = {}

    def part(self, name: str) -> Any:
        async def run() -> None:
            self.running.add(name)
            self.starts.append(name)
            self.ending[name] = trio.Event()
            try:
                await self.ending[name].wait()  # ends by itself only when a test says so
            finally:
                self.running.discard(name)

        return run


def keeper_for(store: FakeLeases, fleet: Fleet, parts: Parts) -> LeaseKeeper:
    return LeaseKeeper(
        cast(Store, store),
        fleet,
        {m.name: parts.part(m.name) for m in fleet},
        parts.part("janitor"),
        poll=1.0,
    )


async def test_the_free_leases_are_taken_and_their_parts_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, parts, fleet = FakeLeases(), Parts(), fleet_of("a", "b", "c")
    store.others = {upstream_key("b")}
    store.views["b"] = UpstreamView("b", True, "llama3:latest", None, 2)
    keeper = keeper_for(store, fleet, parts)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(0.5)
        assert keeper.upstreams == ("a", "c")
        assert keeper.janitor
        assert parts.running == {"a", "c", "janitor"}
        # the upstream another replica drives, as the database shows it
        b = fleet.by_name("b")
        assert b is not None
        assert (b.online, b.resident, b.running) == (True, "llama3:latest", 2)
        # its holder dies: the next round takes it
        store.others.clear()
        await trio.sleep(1.0)
        assert list(keeper.upstreams) == ["a", "b", "c"]
        assert parts.starts.count("b") == 1
        nursery.cancel_scope.cancel()


async def test_a_lost_session_stops_every_part_then_takes_the_leases_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, parts, fleet = FakeLeases(), Parts(), fleet_of("a")
    keeper = keeper_for(store, fleet, parts)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(0.5)
        assert parts.running == {"a", "janitor"}
        store.lost = True
        await trio.sleep(1.0)
        # stopped, reconnected, taken again, started again
        assert store.reconnects == 1
        await trio.sleep(1.0)
        assert parts.running == {"a", "janitor"}
        assert parts.starts.count("a") == 2
        assert keeper.upstreams == ("a",)
        nursery.cancel_scope.cancel()


async def test_a_round_that_fails_strangely_is_logged_and_the_next_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store, parts, fleet = FakeLeases(), Parts(), fleet_of("a")
    store.fail_once = RuntimeError("something no one expected")
    keeper = keeper_for(store, fleet, parts)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(1.5)
        assert keeper.upstreams == ("a",)
        assert "the round failed" in caplog.text
        nursery.cancel_scope.cancel()


async def test_a_part_that_ends_frees_its_lease_for_any_replica(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, parts, fleet = FakeLeases(), Parts(), fleet_of("a")
    keeper = keeper_for(store, fleet, parts)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(0.5)
        parts.ending["janitor"].set()
        await trio.sleep(0.1)
        assert store.released == [janitor_key()]
        assert not keeper.janitor
        await trio.sleep(1.0)
        assert keeper.janitor  # taken again at the next round
        nursery.cancel_scope.cancel()


async def test_after_stop_taking_no_lease_is_taken_and_release_all_frees_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, parts, fleet = FakeLeases(), Parts(), fleet_of("a", "b")
    store.others = {upstream_key("b")}
    keeper = keeper_for(store, fleet, parts)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(0.5)
        keeper.stop_taking()
        store.others.clear()
        await trio.sleep(2.0)
        assert keeper.upstreams == ("a",)
        await keeper.release_all()
        assert parts.running == set()
        assert sorted(store.released) == sorted([upstream_key("a"), janitor_key()])
        nursery.cancel_scope.cancel()
