"""Fixtures for tests over real sockets: the stub Ollama and foreman, both in-process.

Each runs its real HTTP server on an ephemeral loopback port inside the test's nursery.
The `fleet_*` fixtures drive several stubs, one upstream each (named gpu0, gpu1, ...).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.daemon import Control, run
from foreman.stub import StubConfig, StubOllama
from foreman.upstream_specs import UpstreamSpec

# how often the foremen of these tests look at their keys file: a test that edits it waits
# a moment for the reload, not the seconds a deployment can afford
KEY_FILE_POLL = 0.05


@pytest.fixture
def stub_config() -> StubConfig:
    return StubConfig()


@pytest.fixture
async def stub(nursery: trio.Nursery, stub_config: StubConfig) -> StubOllama:
    server = StubOllama(stub_config)
    await nursery.start(server.serve)
    return server


@pytest.fixture
def settings(tmp_path: Path, stub: StubOllama) -> Settings:
    return Settings(
        ollama_url=stub.url,
        db=tmp_path / "foreman.db",
        port=0,
        retry_backoff=0.05,
    )


@pytest.fixture
async def foreman(nursery: trio.Nursery, settings: Settings) -> str:
    url: str = await nursery.start(partial(run, settings, key_file_poll=KEY_FILE_POLL))
    return url


@pytest.fixture
async def client(foreman: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=foreman, timeout=60) as http:
        yield http


@pytest.fixture
def fleet_configs() -> tuple[StubConfig, ...]:
    """One stub per upstream of a fleet test; a test parametrizes this to change them."""
    return (StubConfig(), StubConfig())


@pytest.fixture
async def fleet_stubs(
    nursery: trio.Nursery, fleet_configs: tuple[StubConfig, ...]
) -> tuple[StubOllama, ...]:
    stubs = tuple(StubOllama(config) for config in fleet_configs)
    for stub in stubs:
        await nursery.start(stub.serve)
    return stubs


def fleet_specs(urls: list[str], slots: list[int]) -> tuple[UpstreamSpec, ...]:
    """The upstreams gpu0, gpu1, ... at `urls`, with those slots."""
    return tuple(
        UpstreamSpec(url=url, name=f"gpu{i}", slots=n)
        for i, (url, n) in enumerate(zip(urls, slots, strict=True))
    )


def fleet_settings_for(db: Path, upstreams: tuple[UpstreamSpec, ...]) -> Settings:
    return Settings(
        ollama_url=",".join(u.url for u in upstreams),
        db=db,
        port=0,
        retry_backoff=0.05,
        upstreams=upstreams,
    )


@pytest.fixture
def fleet_settings(tmp_path: Path, fleet_stubs: tuple[StubOllama, ...]) -> Settings:
    """One upstream per stub, each with as many slots as its stub runs requests at once."""
    upstreams = fleet_specs(
        [stub.url for stub in fleet_stubs], [stub.config.parallel for stub in fleet_stubs]
    )
    return fleet_settings_for(tmp_path / "foreman.db", upstreams)


@pytest.fixture
def fleet_control() -> Control:
    """The fleet foreman's workers (`Control.workers`), to wait on what they report."""
    return Control()


@pytest.fixture
async def fleet_foreman(
    nursery: trio.Nursery, fleet_settings: Settings, fleet_control: Control
) -> str:
    """foreman over the fleet, once every worker has found its upstream up."""
    url: str = await nursery.start(
        partial(run, fleet_settings, control=fleet_control, key_file_poll=KEY_FILE_POLL)
    )
    await wait_for(lambda: all(w.statistics().online for w in fleet_control.workers))
    return url


@pytest.fixture
async def fleet_client(fleet_foreman: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fleet_foreman, timeout=120) as http:
        yield http


def job_rows(db: Path) -> list[sqlite3.Row]:
    """The jobs table as another process would see it (read-only, WAL allows it)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM jobs ORDER BY enqueued_at, id").fetchall()
    finally:
        conn.close()


async def wait_for(predicate: Callable[[], object], *, limit: float = 30.0) -> None:
    """Poll `predicate` until true, with a generous deadline (for state another process or
    thread changes, which no trio event announces)."""
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - polling a database file, not a trio task
            await trio.sleep(0.01)
