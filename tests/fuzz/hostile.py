"""Hostile requests for every route: the corpus, a raw socket client and the verdicts.

Requests are written byte by byte (no HTTP library cleans them up first), so the corpus
can hold what real clients never send: invalid UTF-8, bodies nested a hundred thousand
levels deep, headers with control characters, bodies shorter than their Content-Length,
broken chunked encoding, methods a route does not take.
"""

from __future__ import annotations

import json
import socket
import string
import time
from collections import Counter
from typing import Any
from urllib.parse import quote

import attrs
from hypothesis import strategies as st

# every route foreman serves, with a stand-in for its path parameters
ROUTES = (
    "/",
    "/api/version",
    "/api/tags",
    "/api/ps",
    "/api/status",
    "/api/show",
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/api/blobs/{digest}",
    "/api/embed",
    "/api/embeddings",
    "/api/chat",
    "/api/generate",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/{model}",
    "/jobs",
    "/jobs/events",
    "/jobs/{id}",
    "/jobs/{id}/events",
    "/jobs/{id}/cancel",
    "/jobs/{id}/retry",
    "/openapi.json",
    "/ui",
    "/ui/app.js",
    "/ui/{model}",
    "/queue",
    "/queue/events",
    "/health",
    "/ready",
    "/metrics",
)
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
HEADERS = (
    "Content-Type",
    "X-Foreman-Priority",
    "X-Foreman-Ref",
    "Idempotency-Key",
    "Authorization",
    "Accept",
    "Accept-Encoding",
    "Expect",
    "X-Forwarded-For",
    "Cookie",
)
QUERY_KEYS = ("wait", "limit", "cursor", "state", "model", "ref", "older_than", "since", "x")
# models the corpus may name; the health check uses one it never does
MODELS = (
    "llama3",
    "mistral",
    "",
    "nomic-embed-text",
    "llama3:latest",
    "x" * 300,
    "x" * 600,
    "\ud800",
    "llama3\udfff",
    "llama3\n",
)
# text that is not Unicode: lone surrogates, which json.dumps writes as escapes ("\ud800")
text_with_surrogates = st.text(
    st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=20
)

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e308, -1e308, 5e-324, 10**400])
    | st.text(max_size=20)
    | text_with_surrogates
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)


def _maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a plausible value, sometimes anything at all."""
    return st.one_of(valid, valid, json_value)


inference_body = st.fixed_dictionaries(
    {},
    optional={
        "model": _maybe(st.sampled_from(MODELS)),
        "prompt": _maybe(st.text(max_size=30)),
        "messages": _maybe(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "role": _maybe(st.sampled_from(["user", "system"])),
                        "content": _maybe(st.text(max_size=20)),
                    }
                ),
                max_size=3,
            )
        ),
        "stream": _maybe(st.booleans()),
        "options": _maybe(
            st.dictionaries(
                st.sampled_from(["num_ctx", "seed", "num_predict", "temperature"]),
                json_value,
                max_size=3,
            )
        ),
        "keep_alive": _maybe(st.sampled_from(["5m", 0, -1, "forever"])),
        "format": json_value,
        "input": _maybe(st.text(max_size=20)),
        "max_tokens": json_value,
    },
)
job_envelope = st.fixed_dictionaries(
    {},
    optional={
        "endpoint": _maybe(
            st.sampled_from(["/api/chat", "/api/generate", "/v1/chat/completions", "/nope"])
        ),
        "body": _maybe(inference_body),
        "priority": json_value,
        "ref": json_value,
        "max_attempts": json_value,
        "deadline": _maybe(st.sampled_from([60, 31_536_000, 31_536_001, 1e308, 10**400])),
        "extra": json_value,
    },
)


# bodies foreman must refuse with 400 whatever the route: a lone surrogate, at the top or
# nested; numbers JSON cannot hold; a deadline that cannot be a date
UNSTORABLE = (
    b'{"model":"\\ud800","messages":[]}',
    b'{"model":"llama3","messages":[{"role":"user","content":"a\\udfffb"}]}',
    b'{"model":"llama3","prompt":"\\ud83d"}',
    b'{"model":"llama3","options":{"num_ctx":1e400}}',
    b'{"model":"llama3","options":{"temperature":Infinity}}',
    b'{"endpoint":"/api/chat","body":{"model":"\\ud800"}}',
    b'{"endpoint":"/api/chat","body":{"model":"llama3"},"deadline":1e308}',
    b'{"endpoint":"/api/generate","body":{"model":"llama3"},"deadline":1' + b"0" * 400 + b"}",
)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


bodies = st.one_of(
    st.just(b""),
    inference_body.map(_json_bytes),
    job_envelope.map(_json_bytes),
    json_value.map(_json_bytes),
    st.binary(max_size=300),
    # invalid UTF-8 inside an otherwise good request
    st.binary(min_size=1, max_size=8).map(lambda b: b'{"model":"llama3","prompt":"' + b + b'"}'),
    # nesting deeper than any parser's recursion
    st.integers(200, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(200, 20_000).map(
        lambda n: b'{"model":"llama3","messages":' + b"[" * n + b"]" * n + b"}"
    ),
    # big, but under the body limit
    st.integers(1, 4).map(lambda mb: b'{"model":"llama3","prompt":"' + b"a" * (mb << 20) + b'"}'),
    st.sampled_from([b"null", b"[]", b"{}", b'"text"', b"1e999999", b"NaN", b'{"model":NaN}']),
    # what Python's parser takes and JSON does not, or cannot be stored as text
    st.sampled_from(UNSTORABLE),
)
segment = st.one_of(
    st.sampled_from(["01J0000000000000000000000", "x", "..", "%00", "a" * 2000]),
    st.text(max_size=30).map(lambda t: quote(t, safe="")),
    st.text(alphabet=string.printable, max_size=15),
)
header_value = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40),
    st.sampled_from(["-1", "1e9", "99999999999999999999", "é", "\x00", "a" * 9000, "100-continue"]),
)


# request targets that would make a relay call another host or another route: absolute
# form (legal HTTP/1.1) and dot segments, plain and percent-encoded. "{foreman}" and
# "{elsewhere}" are filled in when the request is written: foreman's own authority, and a
# listener standing in for any other host on the network
AUTHORITIES = (
    "{elsewhere}",
    "{foreman}",
    "user@{foreman}",
    "{elsewhere}@{foreman}",
    "{foreman}@{elsewhere}",
    "169.254.169.254",
    "[::1]:1",
)
SCHEMES = ("http", "https", "HTTP", "ftp", "file")
DOTS = ("..", ".", "%2e%2e", "%2E%2e", ".%2e", "%2e.", "%2e", "..%2f", "%2e%2e%2F", "..%5c")
AIMS = ("api/pull", "api/delete", "api/ps", "_stub/state", "etc/passwd", "")


@st.composite
def hostile_targets(draw: st.DrawFn) -> str:
    """An absolute-form target, or a route's path with dot segments climbing out of it."""
    route = draw(st.sampled_from(ROUTES)).replace("{", "").replace("}", "")
    if draw(st.booleans()):
        scheme = draw(st.sampled_from(SCHEMES))
        return f"{scheme}://{draw(st.sampled_from(AUTHORITIES))}{route}"
    dots = draw(st.lists(st.sampled_from(DOTS), min_size=1, max_size=4))
    climb = "/".join(dots)
    return f"{route.rstrip('/')}/{climb}/{draw(st.sampled_from(AIMS))}"


@attrs.frozen
class Request:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    framing: str  # "length", "short" (Content-Length one more than sent), "chunked", "bad-chunk"
    # "1.1" says `Connection: close`; "1.0" closes by default (as nginx's proxy_pass does)
    version: str = "1.1"

    def encode(self, host: str, elsewhere: str = "elsewhere.invalid:9") -> bytes:
        target = self.target.replace("{foreman}", host).replace("{elsewhere}", elsewhere)
        lines = [f"{self.method} {target} HTTP/{self.version}", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        body = self.body
        if self.framing in ("chunked", "bad-chunk"):
            lines.append("Transfer-Encoding: chunked")
            size = f"{len(body):x}" if self.framing == "chunked" else "zz"
            body = size.encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
        else:
            extra = 1 if self.framing == "short" and body else 0
            lines.append(f"Content-Length: {len(body) + extra}")
        if self.version == "1.1":
            lines.append("Connection: close")
        return "\r\n".join(lines).encode("latin-1", "replace") + b"\r\n\r\n" + body


@st.composite
def requests(draw: st.DrawFn) -> Request:
    route = draw(st.sampled_from(ROUTES))
    path = route
    for name in ("{digest}", "{model}", "{id}"):
        if name in path:
            path = path.replace(name, draw(segment))
    if draw(st.integers(0, 9)) == 0:
        path = "/" + "/".join(draw(st.lists(segment, max_size=4)))
    query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), segment, max_size=3))
    target = path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    if not target.startswith("/") or any(c in target for c in " \r\n"):
        target = quote(target, safe="/?&=%")
    if draw(st.integers(0, 9)) == 0:
        target = draw(hostile_targets())
    method = draw(
        st.sampled_from(METHODS)
        if draw(st.integers(0, 3)) == 0
        else st.just("POST" if route.startswith(("/api/", "/v1/")) else "GET")
    )
    headers = tuple(draw(st.lists(st.tuples(st.sampled_from(HEADERS), header_value), max_size=3)))
    if draw(st.booleans()):
        headers += (("Content-Type", "application/json"),)
    framing = draw(st.sampled_from(["length"] * 6 + ["short", "chunked", "bad-chunk"]))
    version = draw(st.sampled_from(["1.1", "1.0"]))
    return Request(method, target, headers, draw(bodies), framing, version)


@attrs.frozen
class Answer:
    status: int | None  # None: the server closed the connection without an answer
    body: bytes
    seconds: float
    # every request asks for the connection to end with the answer: did the server close
    # it? None when not asked (an event stream has no end to wait for)
    closed: bool | None = None


def send(
    host: str,
    port: int,
    data: bytes,
    timeout: float = 30.0,
    half_close: bool = False,
    head_only: bool = False,
) -> Answer:
    """Write `data` (then, with `half_close`, end the sending side, as a client whose
    body falls short does), read the answer to the end (its first MiB kept) and note
    whether the server closed the connection after it; close."""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer (413, 400) before reading everything
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                head, _, rest = buf.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1."):
                    return Answer(None, buf, time.monotonic() - started)
                status = int(head.split(b" ", 2)[1])
                if status != 100:
                    break
                buf = rest  # 100 Continue: the real answer follows
            length = 0
            streaming = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length" and not head_only:
                    length = min(int(value.strip()), 1 << 20)
                elif name == b"content-type" and b"event-stream" in value.lower():
                    streaming = True
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            if streaming:
                return Answer(status, rest, time.monotonic() - started)
            try:
                while chunk := sock.recv(65536):
                    if len(rest) < 1 << 20:
                        rest += chunk
            except TimeoutError:
                return Answer(status, rest, time.monotonic() - started, closed=False)
            return Answer(status, rest, time.monotonic() - started, closed=True)
        except (ConnectionResetError, BrokenPipeError):
            return Answer(None, buf, time.monotonic() - started)
        except TimeoutError:
            return Answer(None, b"timeout", time.monotonic() - started)


def verdict(answer: Answer) -> str:
    """How an answer counts: "2xx", "4xx 400", ..., "closed", or "BUG ..." for what must not
    happen: foreman's own 5xx (Ollama's errors relayed as they are do not count)."""
    if answer.status is None:
        if answer.body == b"timeout":
            return "no answer before the client gave up"
        return "closed without an answer"
    if answer.closed is False:
        return f"BUG connection left open after a {answer.status} answer"
    if answer.status >= 500:
        text = answer.body.decode("utf-8", "replace")
        if "internal error in foreman" in text or not text.strip():
            return f"BUG {answer.status} {text[:200]!r}"
        return f"5xx from ollama, relayed ({answer.status})"
    return f"{answer.status // 100}xx" if answer.status < 400 else f"4xx {answer.status}"


def summary(counts: Counter[str]) -> str:
    total = sum(counts.values())
    parts = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
    return f"hostile input: {total} requests; {parts}"
