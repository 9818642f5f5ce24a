"""Hostile input against every route: a clear 4xx (or the route's normal answer), never
foreman's own 500, never a crash, and a healthy service afterwards.

`make test` sends a short corpus; `make fuzz` (FUZZ_PROFILE=long) a long one. Each run
prints what it sent and how foreman answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urlsplit

import attrs
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreman.stub import expected_text
from foreman.testing import Process, foreman_process, stub_process

from .hostile import UNSTORABLE, Request, hostile_targets, requests, send, summary, verdict

pytestmark = pytest.mark.slow

LONG = os.environ.get("FUZZ_PROFILE") == "long"
EXAMPLES = int(os.environ.get("FUZZ_HOSTILE_EXAMPLES", "3000" if LONG else "150"))
SENTINEL = "sentinel-model"


@attrs.frozen
class Target:
    url: str
    host: str
    port: int
    foreman: Process
    # a listener standing in for any other host on the network: nothing may connect to it
    elsewhere: socket.socket

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def elsewhere_authority(self) -> str:
        host, port = self.elsewhere.getsockname()[:2]
        return f"{host}:{port}"

    def encode(self, request: Request) -> bytes:
        return request.encode(self.authority, self.elsewhere_authority)


def connections_to(listener: socket.socket) -> int:
    """How many connections reached a listener that never accepts (they wait in its
    backlog, so none is missed)."""
    count = 0
    while True:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return count
        sock.close()
        count += 1


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    work = tmp_path_factory.mktemp("hostile")
    elsewhere = socket.create_server(("127.0.0.1", 0), backlog=128)
    elsewhere.setblocking(False)
    stub = stub_process(
        work / "stub.log",
        "--models",
        f"llama3,mistral,{SENTINEL}",
        "--tokens",
        "4",
        "--log-level",
        "warning",
    )
    stub_url = stub.start()
    foreman = foreman_process(
        work / "foreman.db",
        stub_url,
        work / "foreman.log",
        "--retry-backoff",
        "0.05",
        "--max-attempts",
        "2",
        "--job-timeout",
        "20",
    )
    url = foreman.start()
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    try:
        yield Target(url, parts.hostname, parts.port, foreman, elsewhere)
    finally:
        foreman.terminate()
        stub.terminate()
        elsewhere.close()


def assert_healthy(target: Target) -> None:
    assert target.foreman.alive
    with httpx.Client(base_url=target.url, timeout=60) as client:
        assert client.get("/api/version").status_code == 200
        assert client.get("/jobs", params={"limit": 5}).status_code == 200
        body = {"model": SENTINEL, "prompt": "still there?", "stream": False}
        r = client.post("/api/generate", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["response"] == expected_text("/api/generate", body, tokens=4)
    log = target.foreman.output().decode(errors="replace")
    assert "unexpected error answering a request" not in log
    # hypercorn logs its own send race ("Error in ASGI Framework"); foreman must not crash
    assert "a connection ended on an error in the HTTP server" not in log
    assert connections_to(target.elsewhere) == 0, "foreman was made to call another host"


def test_every_route_answers_a_hostile_corpus_without_an_error_of_its_own(target: Target) -> None:
    counts: Counter[str] = Counter()
    bugs: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(request=requests())
    def one(request: Request) -> None:
        answer = send(
            target.host,
            target.port,
            target.encode(request),
            half_close=request.framing == "short",
            head_only=request.method == "HEAD",
        )
        outcome = verdict(answer)
        counts[outcome] += 1
        counts[f"route {request.method} {request.target.split('?')[0][:40]}"] += 0
        if outcome.startswith(("BUG", "no answer")):
            bugs.append(f"{request.method} {request.target[:80]} -> {outcome}")
        assert not outcome.startswith("BUG"), outcome

    started = time.monotonic()
    try:
        one()
    finally:
        counts = Counter({k: v for k, v in counts.items() if v})
        print(f"\n{summary(counts)} in {time.monotonic() - started:.0f}s")
        for bug in bugs[:10]:
            print("  " + bug)
    assert_healthy(target)


def test_absolute_targets_and_dot_segments_reach_only_ollama_and_get_a_4xx(
    target: Target,
) -> None:
    counts: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES // 3,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(aim=hostile_targets(), method=st.sampled_from(["GET", "POST", "HEAD", "DELETE"]))
    def one(aim: str, method: str) -> None:
        request = Request(method, aim, (), b'{"model":"llama3"}', "length")
        answer = send(target.host, target.port, target.encode(request), head_only=method == "HEAD")
        outcome = verdict(answer)
        counts[outcome] += 1
        assert answer.status is not None, (aim, outcome)
        assert answer.status < 500, (aim, outcome)
        own = aim.lower().startswith(("http://{foreman}/", "https://{foreman}/"))
        if not own:
            assert 400 <= answer.status < 500, (aim, outcome)
        assert connections_to(target.elsewhere) == 0, aim

    try:
        one()
    finally:
        print(f"\n{summary(counts)}")
    assert_healthy(target)


def test_deeply_nested_and_huge_bodies_get_a_4xx(target: Target) -> None:
    # regression: nesting past json's recursion limit was a 500 ("internal error")
    deep = b'{"model":"llama3","messages":' + b"[" * 5000 + b"]" * 5000 + b"}"
    cases = [
        ("/api/chat", b"[" * 100_000 + b"]" * 100_000),
        ("/api/chat", deep),
        ("/v1/chat/completions", deep),
        ("/jobs", b'{"endpoint":"/api/chat","body":' + deep + b"}"),
    ]
    with httpx.Client(base_url=target.url, timeout=60) as client:
        for path, body in cases:
            r = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (path, r.status_code, r.text[:200])
            assert "nested too deeply" in r.text
        huge = b'{"model":"llama3","prompt":"' + b"a" * (40 << 20) + b'"}'
        r = client.post("/api/generate", content=huge)
        assert r.status_code == 413, r.status_code
    assert_healthy(target)


def test_what_cannot_be_stored_or_shown_is_a_400_on_every_submitting_route(
    target: Target,
) -> None:
    # regression: a lone surrogate failed its whole group commit (500 for its neighbours),
    # and a deadline of 1e308 was stored and then broke every listing that showed it
    routes = ("/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions", "/jobs")
    with httpx.Client(base_url=target.url, timeout=60) as client:
        for path in routes:
            for body in UNSTORABLE:
                r = client.post(path, content=body, headers={"Content-Type": "application/json"})
                assert r.status_code == 400, (path, body[:80], r.status_code, r.text[:200])
        assert client.get("/jobs", params={"limit": 500}).status_code == 200
    assert_healthy(target)


def test_slow_clients_do_not_hold_up_anyone_else(target: Target) -> None:
    """Clients that trickle their headers or their body one byte at a time, while a
    normal client gets its answers."""
    # the sentinel: the hostile corpus of an earlier test may have deleted llama3 from the
    # stub (a relayed DELETE /api/delete), and then its 404 would be the right answer
    body = json.dumps({"model": SENTINEL, "prompt": "slow", "stream": False}).encode()
    head = (
        f"POST /api/generate HTTP/1.1\r\nHost: {target.host}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    slow = [socket.create_connection((target.host, target.port), timeout=10) for _ in range(20)]
    try:
        for i in range(40):
            for n, sock in enumerate(slow):
                data = head if n % 2 else head + body  # half trickle the head, half the body
                if i < len(data):
                    with contextlib.suppress(OSError):  # foreman may give up on it
                        sock.sendall(data[i : i + 1])
            if i % 10 == 0:
                with httpx.Client(base_url=target.url, timeout=30) as client:
                    r = client.post("/api/generate", content=body)
                    assert r.status_code == 200
            time.sleep(0.01)
    finally:
        for sock in slow:
            sock.close()
    assert_healthy(target)


def _raw(target: Target, data: bytes, half_close: bool = False) -> int | None:
    return send(target.host, target.port, data, timeout=30, half_close=half_close).status


def test_a_client_that_closes_mid_body_cannot_stop_the_server(target: Target) -> None:
    # regression: hypercorn's error answer raced the connection's close and the
    # BusyResourceError ended the whole server; it took two or three of these
    body = b'{"model":"llama3"}'
    for _ in range(100):
        for method, path in (("PUT", "/api/generate"), ("GET", "/jobs//events"), ("POST", "/x")):
            data = (
                f"{method} {path} HTTP/1.1\r\nHost: {target.host}\r\n"
                f"Content-Length: {len(body) + 1}\r\nConnection: close\r\n\r\n"
            ).encode() + body
            _raw(target, data, half_close=True)
    assert_healthy(target)


def test_header_values_beyond_ascii_are_relayed_not_a_500(target: Target) -> None:
    # regression: httpx refused a Latin-1 header value on the relay: a 500 from foreman
    body = b'{"model":"llama3"}'
    for path in ("/api/show", "/api/embed", "/v1/models"):
        method = "GET" if path == "/v1/models" else "POST"
        data = (
            f"{method} {path} HTTP/1.1\r\nHost: {target.host}\r\nX-Name: caf\xe9\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1") + body
        status = _raw(target, data)
        assert status is not None, (path, status)
        assert status < 500, (path, status)
    assert_healthy(target)


def test_relayed_paths_go_to_ollama_as_the_client_encoded_them(target: Target) -> None:
    # regression: the relay re-sent the decoded path: a %09 or %00 in it made httpx
    # raise (a 500), and "..%2F" segments were resolved into another Ollama route
    for path in ("/api/blobs/a%09b", "/api/blobs/%00", "/v1/models/x%0Dy"):
        method = "GET" if path.startswith("/v1/") else "POST"
        data = f"{method} {path} HTTP/1.1\r\nHost: {target.host}\r\nConnection: close\r\n\r\n"
        status = _raw(target, data.encode())
        assert status is not None, (path, status)
        assert status < 500, (path, status)
    with httpx.Client(base_url=target.url, timeout=30) as client:
        r = client.get("/v1/models/..%2F..%2Fapi%2Fps")
        assert r.status_code == 400  # refused before routing, never Ollama's /api/ps
        assert "models" not in r.json()
    assert_healthy(target)


def test_an_answer_that_must_end_the_connection_ends_it(target: Target) -> None:
    # regression: answers to HTTP/1.0 and `Connection: close` requests left the
    # connection open, so a client reading to the end (nginx's proxy_pass) hung
    chat = json.dumps({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]})
    cases = [
        ("GET", "/health", ""),
        ("HEAD", "/health", ""),
        ("GET", "/api/tags", ""),
        ("GET", "/jobs", ""),
        ("GET", "/nope", ""),
        ("POST", "/api/generate", "{not json"),
        ("POST", "/api/chat", chat),
    ]
    for version in ("1.0", "1.1"):
        for method, path, body in cases:
            framing = "length"
            request = Request(method, path, (), body.encode(), framing, version)
            answer = send(
                target.host,
                target.port,
                request.encode(f"{target.host}:{target.port}"),
                head_only=method == "HEAD",
            )
            assert answer.closed is True, (version, method, path, verdict(answer))
            assert not verdict(answer).startswith("BUG"), (version, path, verdict(answer))
    assert_healthy(target)
