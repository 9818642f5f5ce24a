"""Fixtures for the stub's tests: a stub on an ephemeral port and an httpx client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from foreman.stub import StubOllama


@pytest.fixture
async def stub(nursery: trio.Nursery) -> StubOllama:
    server = StubOllama()
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def client(stub: StubOllama) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stub.url, timeout=10) as http:
        yield http
