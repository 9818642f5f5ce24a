"""Fixtures for the dashboard's browser tests: the system's Chromium driven by Playwright,
with foreman and the stub Ollama as real processes.

No browser is ever downloaded: the tests use the Chromium the system's packages installed
(`make browser` installs Debian's), or the one FOREMAN_CHROMIUM names. Without one they
skip, unless FOREMAN_REQUIRE_BROWSER=1 (set by CI), where they fail instead.
Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from foreman.testing import Process, foreman_process, stub_process

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
# generous: a slow machine must never fail a test by taking its time
TIMEOUT_MS = 30_000
# keep Chromium off the network it has no business with (and quiet on a closed one)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def chromium_path() -> str | None:
    named = os.environ.get("FOREMAN_CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).exists() else None)
    for candidate in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Chromium, once for the session; `expect` waits as long as any other step."""
    path = chromium_path()
    if path is None:
        reason = "no Chromium on this machine (`make browser` installs the system's package)"
        if os.environ.get("FOREMAN_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, make_foreman: Callable[..., Foreman]) -> Iterator[Any]:
    """A desktop-sized tab, closed before foreman stops (so its open event stream does
    not hold foreman's shutdown)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def shoot(request: pytest.FixtureRequest) -> Callable[[Any, str], Path]:
    """`shoot(page, "02-queued")` saves a full-page screenshot for this test."""
    folder = ARTIFACTS / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    def take(page: Any, name: str) -> Path:
        path: Path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[Process]:
    # a visible load, so the timeline has something to draw
    process = stub_process(tmp_path / "stub.log", "--load-delay", "0.3")
    process.start()
    try:
        yield process
    finally:
        process.terminate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Foreman:
    """foreman as a process that a test may stop and start again on the same port."""

    def __init__(self, tmp_path: Path, stub_url: str, *extra: str) -> None:
        self.tmp_path = tmp_path
        self.stub_url = stub_url
        self.extra = extra
        self.port = free_port()
        self.process: Process | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        self.process = foreman_process(
            self.tmp_path / "foreman.db",
            self.stub_url,
            self.tmp_path / "foreman.log",
            "--port",
            str(self.port),
            "--retry-backoff",
            "0.05",
            *self.extra,
        )
        self.process.start()
        return self.url

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process = None


@pytest.fixture
def make_foreman(tmp_path: Path, stub: Process) -> Iterator[Callable[..., Foreman]]:
    started: list[Foreman] = []

    def make(*extra: str) -> Foreman:
        foreman = Foreman(tmp_path, stub.url, *extra)
        foreman.start()
        started.append(foreman)
        return foreman

    yield make
    for foreman in started:
        foreman.stop()


@pytest.fixture
def api(make_foreman: Callable[..., Foreman]) -> Iterator[Callable[..., httpx.Client]]:
    """`api(url, key=None)`: an HTTP client, closed before foreman stops (an idle
    keep-alive connection would make it wait out its graceful timeout)."""
    clients: list[httpx.Client] = []

    def make(url: str, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = httpx.Client(base_url=url, headers=headers, timeout=60)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
