"""The request target every route sees: checked once, before routing and authorisation.

Pure. foreman routes and authorises a request on its path, and relays that same path to
Ollama; anything in the target that could make the two differ is refused here. That is:

- an absolute-form target (`GET http://host/path`) naming an authority other than the
  request's own Host: it is legal HTTP/1.1, but the only host foreman ever relays to is
  its configured Ollama, so a target naming another one is a mistake or an attack. One
  naming foreman's own authority is taken as its path; the authority picks nothing.
- a dot segment (`.` or `..`), plain or percent-encoded (`%2e%2e`): an HTTP client or
  Ollama would resolve it after foreman had authorised the unresolved path.
- an encoded slash (`%2F`): decoded, it splits a segment in two, so the route foreman
  matched and the route Ollama matches would differ.
- a fragment (`#`), which a request target never carries; and any target that is
  neither a path nor an absolute URL (`*`, `example.com:80`).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

ABSOLUTE = re.compile(rb"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)$", re.DOTALL)
SCHEMES = frozenset({b"http", b"https"})
DEFAULT_PORTS = {b"http": b"80", b"https": b"443"}


class TargetRefused(ValueError):
    """A request target foreman will not route; `path` is the best guess at the path it
    named, so the refusal can take that route family's error shape."""

    def __init__(self, message: str, path: str = "/") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def checked_path(raw_path: bytes, host: bytes | None) -> bytes:
    """The origin-form path (still percent-encoded, no query) of a request whose target,
    without its query, is `raw_path` and whose Host header is `host`.

    Raises TargetRefused for a target that could reach anything but the route foreman
    matches on its path."""
    path = raw_path
    if not path.startswith(b"/"):
        found = ABSOLUTE.match(path)
        if found is None:
            raise TargetRefused("the request target must be a path starting with '/'")
        scheme, authority, rest = found.groups()
        path = rest or b"/"
        guess = _text(path) if path.startswith(b"/") else "/"
        if scheme.lower() not in SCHEMES:
            raise TargetRefused(f"foreman does not relay {_text(scheme)!r} URLs", guess)
        if host is None or not same_authority(scheme.lower(), authority, host):
            raise TargetRefused(
                f"the request names another host ({_text(authority)!r}); foreman relays "
                "only to its own Ollama: send the path alone",
                guess,
            )
        if not path.startswith(b"/"):
            raise TargetRefused("the request target must be a path starting with '/'", guess)
    if b"#" in path:
        raise TargetRefused("a request target carries no fragment ('#')", _text(path))
    for segment in path.split(b"/"):
        if b"%2f" in segment.lower():
            raise TargetRefused(
                "an encoded slash (%2F) in the request path is refused", _text(path)
            )
        if unquote_to_bytes(segment) in (b".", b".."):
            raise TargetRefused(
                "dot segments ('.', '..', '%2e%2e') in the request path are refused",
                _text(path),
            )
    return path


def same_authority(scheme: bytes, authority: bytes, host: bytes) -> bool:
    """Whether an absolute-form target's authority is the request's own Host (case and a
    default port aside). A user part (`user@host`) never matches."""
    if b"@" in authority:
        return False
    return _canonical(scheme, authority) == _canonical(scheme, host.strip())


def _canonical(scheme: bytes, authority: bytes) -> bytes:
    authority = authority.lower()
    default = DEFAULT_PORTS.get(scheme)
    if default is not None and authority.endswith(b":" + default):
        authority = authority[: -len(default) - 1]
    return authority


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")
