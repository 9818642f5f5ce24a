"""At a low open-file limit, a flood of idle connections never makes foreman run out of
files, and a keyed client is served again once the flood's connections are closed.

foreman runs as a real process under `ulimit -n`, since the limit is the process's own.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import trio

from foreman.connections import RESERVED_FILES
from foreman.stub import StubOllama
from foreman.testing import Process, foreman_process
from foreman.upstream import upstream_connections

from .test_connections import address

SOFT_LIMIT = 256
FLOOD = 600  # well past the limit: every descriptor foreman has, twice over
KEY = "flood-test-key-0123456789"
# generous: each wait is on an event foreman causes, never on the machine's speed
DEADLINE = 60.0


def limited_foreman(tmp_path: Path, stub: StubOllama) -> Process:
    """foreman under a low open-file limit (soft and hard), with a key and a 1 s head
    deadline."""
    keys = tmp_path / "keys"
    keys.write_text(f"app {KEY} inference,jobs\n")
    log = tmp_path / "foreman.log"
    extra = ("--api-keys-file", str(keys), "--header-timeout", "1")
    serve = foreman_process(tmp_path / "foreman.db", stub.url, log, *extra).argv
    return Process(["sh", "-c", f'ulimit -n {SOFT_LIMIT} && exec "$@"', "sh", *serve], log)


def open_flood(url: str, count: int) -> list[socket.socket]:
    """Connections that send nothing; a connection refused at once counts as opened."""
    flood = []
    for _ in range(count):
        sock = socket.create_connection(address(url), timeout=DEADLINE)
        flood.append(sock)
    return flood


def served(url: str) -> bool:
    try:
        r = httpx.get(url + "/api/tags", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def flood_then_serve(url: str) -> None:
    """Open the flood and keep it open; foreman closes its connections itself (over the
    cap at once, the rest at the head deadline) and then serves a keyed client again."""
    assert served(url)
    flood = open_flood(url, FLOOD)
    try:
        deadline = time.monotonic() + DEADLINE
        while not served(url):
            assert time.monotonic() < deadline, "foreman never served a client again"
            time.sleep(0.1)
    finally:
        for sock in flood:
            sock.close()


async def test_a_flood_of_idle_connections_never_exhausts_the_file_limit(
    tmp_path: Path, stub: StubOllama
) -> None:
    proc = limited_foreman(tmp_path, stub)
    url = await trio.to_thread.run_sync(proc.start)
    try:
        await trio.to_thread.run_sync(flood_then_serve, url)
        assert proc.alive
    finally:
        await trio.to_thread.run_sync(proc.terminate)
    log = proc.output(since_start=True).decode(errors="replace")
    assert "Too many open files" not in log
    assert "EMFILE" not in log
    # what is left of the limit after foreman's own files and its upstream's pools
    cap = SOFT_LIMIT - RESERVED_FILES - upstream_connections(1)
    assert f"at most {cap} client connections" in log
