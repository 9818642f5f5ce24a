"""An answer to an HTTP/1.0 request, or to one that says `Connection: close`, ends with
the connection closed.

Regression: foreman sent such answers and kept the connection open. An HTTP/1.0 answer
without a length (a relayed or streamed one) ends only at the close, so a client that
reads to the end (nginx's default `proxy_pass`, ApacheBench, health checkers) hung
until its own timeout. Each case here reads over a raw socket until EOF, with a deadline
far beyond what an answer takes: only a connection the server closed passes.
"""

from __future__ import annotations

import json
from functools import partial

import pytest
import trio

from foreman.stub import StubOllama

DEADLINE = 30.0

HTTP10 = "HTTP/1.0"
CLOSE = "HTTP/1.1 close"


def request(method: str, path: str, form: str, body: bytes = b"") -> bytes:
    if form == HTTP10:
        head = f"{method} {path} HTTP/1.0\r\n"
    else:
        head = f"{method} {path} HTTP/1.1\r\nHost: foreman\r\nConnection: close\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def read_to_eof(url: str, raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send `raw` and read until the server closes; the status line, headers and body
    (de-chunked). Fails if the server does not close within the deadline."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    data = b""
    with trio.fail_after(DEADLINE):
        await stream.send_all(raw)
        while chunk := await stream.receive_some(65536):
            data += chunk
    await stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"]), "answer cut short"
    elif headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return status, headers, body


def dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += rest[:size]
        body = rest[size + 2 :]


FORMS = pytest.mark.parametrize("form", [HTTP10, CLOSE])


@FORMS
async def test_health(foreman: str, form: str) -> None:
    status, _, body = await read_to_eof(foreman, request("GET", "/health", form))
    assert status.split()[1] == "200"
    assert json.loads(body)["status"] == "ok"


@FORMS
async def test_a_json_route_of_foremans_own(foreman: str, form: str) -> None:
    status, _, body = await read_to_eof(foreman, request("GET", "/jobs", form))
    assert status.split()[1] == "200"
    assert isinstance(json.loads(body), dict)


@FORMS
async def test_a_relayed_route(foreman: str, stub: StubOllama, form: str) -> None:
    status, _, body = await read_to_eof(foreman, request("GET", "/api/tags", form))
    assert status.split()[1] == "200"
    assert json.loads(body)["models"]


@FORMS
async def test_a_streamed_chat_answer(foreman: str, form: str) -> None:
    payload = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
    raw = request("POST", "/api/chat", form, json.dumps(payload).encode())
    status, _, body = await read_to_eof(foreman, raw)
    assert status.split()[1] == "200"
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    assert lines[-1]["done"] is True


@FORMS
async def test_a_chat_answer_that_waited_in_the_queue(
    foreman: str, stub: StubOllama, form: str
) -> None:
    """The answer to a job queued behind a running one, told apart from the first."""
    stub.hold()
    first: dict[str, object] = {
        "model": "llama3",
        "messages": [{"role": "user", "content": "first"}],
    }
    second: dict[str, object] = {
        "model": "llama3",
        "messages": [{"role": "user", "content": "second"}],
    }
    second["stream"] = False
    answers: dict[str, tuple[str, dict[str, str], bytes]] = {}

    async def send(name: str, payload: dict[str, object]) -> None:
        raw = request("POST", "/api/chat", form, json.dumps(payload).encode())
        answers[name] = await read_to_eof(foreman, raw)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(send, "first", first))
        await stub.wait_until(lambda: stub.inflight_inference == 1)
        nursery.start_soon(partial(send, "second", second))
        await wait_queued(foreman)
        stub.release()
    status, _, body = answers["second"]
    assert status.split()[1] == "200"
    assert json.loads(body)["done"] is True
    assert answers["first"][0].split()[1] == "200"


async def wait_queued(url: str) -> None:
    """Until foreman holds a queued job (read over the same kind of raw request)."""
    with trio.fail_after(DEADLINE):
        while True:
            _, _, body = await read_to_eof(url, request("GET", "/jobs?state=queued", HTTP10))
            if json.loads(body).get("jobs"):
                return
            await trio.sleep(0.01)
