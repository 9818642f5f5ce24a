"""Fixtures for tests over real sockets: the stub Ollama and foreman, both in-process.

Each runs its real HTTP server on an ephemeral loopback port inside the test's nursery.
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
from foreman.daemon import run
from foreman.stub import StubConfig, StubOllama

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
