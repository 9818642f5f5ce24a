"""What the relay sends where: only the configured Ollama, only the route foreman
authorised, only the client's own headers; and answers framed once, by foreman.

Requests are written on a raw socket, since HTTP clients clean up exactly the targets
these tests need (absolute form, dot segments)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import attrs
import pytest
import trio

from foreman.stub import StubOllama
from foreman.stub.record import RequestEntry


@attrs.frozen
class RawAnswer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def json(self) -> object:
        return json.loads(self.body)


# every request a test writes carries this header, so the stub's record tells them from
# foreman's own calls (its probes of Ollama at start)
MARK = "X-Relay-Test: 1"


def relayed(stub: StubOllama) -> list[RequestEntry]:
    """The test's requests that reached `stub`."""
    return [e for e in stub.requests if ("x-relay-test", "1") in e.headers]


def authority(url: str) -> str:
    return urlsplit(url).netloc


async def raw_request(
    url: str,
    method: str,
    target: str,
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    host: str | None = None,
) -> RawAnswer:
    """One request on its own connection, exactly as written; the answer as it came."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host or parts.netloc}", MARK]
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines.append("Connection: close")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        await stream.send_all(data)
        with trio.fail_after(30):
            return await _read_answer(stream, method)


async def _read_answer(stream: trio.SocketStream, method: str) -> RawAnswer:
    """Read one answer, framed as its head says (the server may keep the socket open)."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += await _more(stream)
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1])
    headers = tuple(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in header_lines)
    )
    lengths = [int(v) for k, v in headers if k == "content-length"]
    if method == "HEAD" or status in (204, 304):
        rest = b""
    elif ("transfer-encoding", "chunked") in headers:
        while not rest.endswith(b"0\r\n\r\n"):
            rest += await _more(stream)
        rest = _dechunk(rest)
    elif lengths:
        while len(rest) < lengths[0]:
            rest += await _more(stream)
    else:
        while chunk := await stream.receive_some(65536):
            rest += chunk
    return RawAnswer(status, headers, rest)


async def _more(stream: trio.SocketStream) -> bytes:
    chunk = await stream.receive_some(65536)
    assert chunk, "the server closed the connection in the middle of an answer"
    return chunk


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


@pytest.fixture
async def elsewhere(nursery: trio.Nursery) -> AsyncIterator[StubOllama]:
    """Another host on the network that foreman must never be made to call."""
    server = StubOllama()
    await nursery.start(server.serve)
    yield server
    assert server.counters()["total_connections"] == 0, "foreman connected to another host"


ABSOLUTE_FORM = (
    ("GET", "/api/tags", b""),
    ("GET", "/api/version", b""),
    ("GET", "/v1/models", b""),
    ("POST", "/api/show", b'{"model":"llama3"}'),
    ("POST", "/api/embed", b'{"model":"nomic-embed-text","input":"a"}'),
    ("POST", "/v1/embeddings", b'{"model":"nomic-embed-text","input":"a"}'),
    ("POST", "/api/chat", b'{"model":"llama3","messages":[],"stream":false}'),
)


async def test_an_absolute_target_naming_another_host_is_refused_and_reaches_nothing(
    foreman: str, stub: StubOllama, elsewhere: StubOllama
) -> None:
    for method, path, body in ABSOLUTE_FORM:
        target = f"http://{authority(elsewhere.url)}{path}"
        answer = await raw_request(foreman, method, target, body)
        assert answer.status == 400, (target, answer)
        error = answer.json()
        assert isinstance(error, dict)
        if path.startswith("/v1/"):
            assert error["error"]["type"] == "invalid_request_error", error
            message = error["error"]["message"]
        else:
            message = error["error"]
        assert "another host" in message, error
    assert elsewhere.requests == []
    assert relayed(stub) == []


async def test_an_absolute_target_is_refused_whatever_scheme_or_user_part_it_carries(
    foreman: str, stub: StubOllama, elsewhere: StubOllama
) -> None:
    own = authority(foreman)
    for target in (
        f"ftp://{own}/api/tags",
        f"http://user@{own}/api/tags",
        f"http://{authority(elsewhere.url)}@{own}/api/tags",
        f"http://{own}@{authority(elsewhere.url)}/api/tags",
        "*",
        own,
    ):
        answer = await raw_request(foreman, "GET", target)
        assert answer.status == 400, (target, answer)
    assert relayed(stub) == []


async def test_an_absolute_target_naming_foreman_itself_is_relayed_on_its_path(
    foreman: str, stub: StubOllama, elsewhere: StubOllama
) -> None:
    target = f"http://{authority(foreman).upper()}/api/tags?x=1"
    answer = await raw_request(foreman, "GET", target)
    assert answer.status == 200, answer
    [seen] = relayed(stub)
    assert (seen.method, seen.target) == ("GET", "/api/tags?x=1")
    assert answer.json() == json.loads(await _direct(stub, "/api/tags"))


async def _direct(stub: StubOllama, path: str) -> bytes:
    return (await raw_request(stub.url, "GET", path)).body


DOT_SEGMENTS = (
    ("GET", "/v1/models/../../api/pull"),
    ("GET", "/v1/models/%2e%2e/%2E%2E/api/pull"),
    ("GET", "/v1/models/.%2e/.%2E/api/ps"),
    ("GET", "/v1/models/x/./y"),
    ("GET", "/api/./tags"),
    ("POST", "/api/blobs/..%2F..%2Fapi%2Fpull"),
    ("POST", "/api/blobs/a%2Fb"),
    ("HEAD", "/api/blobs/%2e%2e"),
    ("GET", "/v1/models/x%2fy"),
    ("GET", "/api/tags#x"),
)


async def test_dot_segments_and_encoded_slashes_are_refused_before_routing(
    foreman: str, stub: StubOllama
) -> None:
    for method, target in DOT_SEGMENTS:
        answer = await raw_request(foreman, method, target)
        assert answer.status == 400, (target, answer)
        if method != "HEAD":
            error = answer.json()
            assert isinstance(error, dict)
            text = json.dumps(error)
            assert "refused" in text or "fragment" in text, error
            if target.startswith("/v1/"):
                assert error["error"]["type"] == "invalid_request_error", error
    assert relayed(stub) == []


async def test_relayed_requests_carry_the_clients_headers_and_nothing_of_the_frameworks(
    foreman: str, stub: StubOllama
) -> None:
    headers = (("X-Name", "caf\xe9"), ("User-Agent", "hostile/1"))
    answer = await raw_request(foreman, "GET", "/api/tags", headers=headers)
    assert answer.status == 200
    [seen] = relayed(stub)
    names = [name for name, _ in seen.headers]
    assert "remote-addr" not in names, seen.headers
    assert ("x-name", "caf\xe9") in seen.headers
    assert ("user-agent", "hostile/1") in seen.headers
    assert seen.target == "/api/tags"


async def test_relayed_answers_carry_one_date_one_server_and_their_length(
    foreman: str, stub: StubOllama
) -> None:
    version = await raw_request(foreman, "GET", "/api/version")
    show = await raw_request(foreman, "POST", "/api/show", b'{"model":"llama3"}')
    missing = await raw_request(foreman, "POST", "/api/show", b'{"model":"nope"}')
    embed = await raw_request(
        foreman, "POST", "/api/embed", b'{"model":"nomic-embed-text","input":"a"}'
    )
    generate = await raw_request(
        foreman, "POST", "/api/generate", b'{"model":"llama3","prompt":"hi","stream":false}'
    )
    for answer in (version, show, missing, embed, generate):
        assert len(answer.all("date")) == 1, answer.headers
        assert len(answer.all("server")) == 1, answer.headers
        assert answer.all("transfer-encoding") == [], answer.headers
        assert answer.all("content-length") == [str(len(answer.body))], answer.headers
    assert (version.status, show.status, missing.status) == (200, 200, 404)
    root = await raw_request(foreman, "GET", "/")
    head = await raw_request(foreman, "HEAD", "/")
    assert head.status == 200
    assert head.all("content-length") == root.all("content-length") == [str(len(root.body))]


async def test_a_deeply_nested_embedding_body_is_relayed_not_a_500(
    foreman: str, stub: StubOllama
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/api/embed", "/api/embeddings", "/v1/embeddings"):
        body = b'{"model":"nomic-embed-text","input":' + deep + b"}"
        answer = await raw_request(foreman, "POST", path, body)
        direct = await raw_request(stub.url, "POST", path, body)
        assert (answer.status, answer.body) == (direct.status, direct.body), (path, answer)
        assert answer.status < 500
