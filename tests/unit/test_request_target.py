"""The request-target check (foreman.target) and the upstream URL built from its path."""

from __future__ import annotations

import string
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.target import TargetRefused, checked_path
from foreman.upstream import Upstream

HOST = b"foreman.example.com"

# a segment foreman routes as it is: never a dot segment, never an encoded slash
plain_segment = st.text(
    alphabet=string.ascii_letters + string.digits + "-_~:@!$&'()*+,;=%", max_size=12
).filter(lambda s: unquote(s) not in (".", "..") and "%2f" not in s.lower())
paths = st.lists(plain_segment, max_size=5).map(lambda parts: "/" + "/".join(parts))
dot_spellings = st.sampled_from(
    [".", "..", "%2e", "%2E", ".%2e", "%2e.", "%2e%2e", "%2E%2e", "..", "%2e%2E"]
)


@given(paths)
def test_a_plain_path_is_accepted_as_it_is(path: str) -> None:
    assert checked_path(path.encode(), HOST) == path.encode()


@given(paths, dot_spellings, st.integers(0, 5))
def test_a_dot_segment_anywhere_in_any_spelling_is_refused(path: str, dots: str, at: int) -> None:
    parts = path.split("/")
    parts.insert(min(1 + at, len(parts)), dots)
    with pytest.raises(TargetRefused, match="dot segments"):
        checked_path("/".join(parts).encode(), HOST)


@pytest.mark.parametrize("segment", ["a%2Fb", "%2f", "..%2F..%2Fapi", "x%2fy%2F"])
def test_an_encoded_slash_is_refused(segment: str) -> None:
    with pytest.raises(TargetRefused, match="encoded slash"):
        checked_path(f"/api/blobs/{segment}".encode(), HOST)


@pytest.mark.parametrize(
    ("target", "host", "path"),
    [
        (b"http://foreman.example.com/api/tags", HOST, b"/api/tags"),
        (b"HTTP://Foreman.Example.COM:80/api/tags", HOST, b"/api/tags"),
        (b"https://foreman.example.com:443/v1/models", HOST, b"/v1/models"),
        (b"http://127.0.0.1:8080", b"127.0.0.1:8080", b"/"),
    ],
)
def test_an_absolute_target_naming_the_requests_own_host_becomes_its_path(
    target: bytes, host: bytes, path: bytes
) -> None:
    assert checked_path(target, host) == path


@pytest.mark.parametrize(
    ("target", "host", "family_path"),
    [
        (b"http://169.254.169.254/latest/meta-data", HOST, "/latest/meta-data"),
        (b"http://127.0.0.1:11434/api/pull", HOST, "/api/pull"),
        (b"http://foreman.example.com:8080/api/tags", HOST, "/api/tags"),
        (b"http://user@foreman.example.com/api/tags", HOST, "/api/tags"),
        (b"http://foreman.example.com/v1/models", None, "/v1/models"),
        (b"ftp://foreman.example.com/api/tags", HOST, "/api/tags"),
        (b"*", HOST, "/"),
        (b"foreman.example.com:80", HOST, "/"),
        (b"http:/api/tags", HOST, "/"),
    ],
)
def test_any_other_target_is_refused_with_the_path_it_named(
    target: bytes, host: bytes | None, family_path: str
) -> None:
    with pytest.raises(TargetRefused) as refused:
        checked_path(target, host)
    assert refused.value.path == family_path


def test_a_fragment_is_refused() -> None:
    with pytest.raises(TargetRefused, match="fragment"):
        checked_path(b"/api/tags#x", HOST)


@given(
    base=st.sampled_from(["http://127.0.0.1:11434", "http://ollama.lan:11434/prefix/"]),
    path=paths,
    query=st.text(alphabet=string.ascii_letters + "=&%20", max_size=10),
    slashes=st.integers(1, 3),
)
def test_the_upstream_url_is_the_base_with_the_path_and_never_another_host(
    base: str, path: str, query: str, slashes: int
) -> None:
    upstream = Upstream(httpx.AsyncClient(base_url=base))
    target = "/" * (slashes - 1) + path + (f"?{query}" if query else "")
    url = upstream.url(target)
    base_url = httpx.URL(base if base.endswith("/") else base + "/")
    assert (url.scheme, url.host, url.port) == (base_url.scheme, base_url.host, base_url.port)
    assert url.raw_path == base_url.raw_path + target[1:].encode()


@pytest.mark.parametrize(
    "target", ["http://other-host/api/tags", "other-host/api/tags", "/a/../../b", "/a/%2e%2e"]
)
def test_the_upstream_url_refuses_what_is_not_a_checked_path(target: str) -> None:
    upstream = Upstream(httpx.AsyncClient(base_url="http://127.0.0.1:11434"))
    with pytest.raises(httpx.InvalidURL):
        upstream.url(target)
