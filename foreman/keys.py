"""API keys: the keys file, who may call which route, and reloading on change.

The file holds one key a line, `NAME KEY SCOPE[,SCOPE...] [FIELD=VALUE ...]` separated by
white space, with `#` comments (so a key cannot hold `#`) and blank lines. Fields:
`max_queued=N` (more than N unfinished jobs for this key are refused with 429) and
`weight=N` (1 to 1000, default 1: the key's jobs take N turns for each turn of a key of
weight 1 among queued jobs for one model; see `policy.turn_for`). Scopes:

- `inference`: the Ollama and /v1 generation and embedding routes, and read-only model
  information (tags, ps, show, version, /v1/models)
- `jobs`: the job API (/jobs); such a key sees only the jobs it made
- `admin`: model management (pull, push, create, copy, delete, blobs), purging jobs,
  /metrics, and everything the other scopes allow, every job included

Any key may watch the dashboard's data (/queue, /queue/events: a non-admin key sees only
its own jobs there too); the dashboard's page itself (/ui) and /health, /ready are open.

Keys are printable ASCII: a header carries bytes that the server reads back as Latin-1,
so a key with other characters could never be presented as written.

`parse_keys` and `required_scopes` are pure. `KeyFile` reads the file and keeps the key
ring in force; a reload that fails keeps the previous keys (never falls open). A key's
text is never put in a message or a log line: errors name the line and the key's name.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import re
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from foreman.policy import MAX_WEIGHT

log = logging.getLogger("foreman.keys")

MIN_KEY_LENGTH = 16
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
# what a header can carry so that it reads back as the same text: a key beyond it would
# load and never match
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")


class KeysError(Exception):
    """The keys file cannot be read or has a bad line (the message never holds a key)."""


class Scope(enum.StrEnum):
    INFERENCE = "inference"
    JOBS = "jobs"
    ADMIN = "admin"


ALL_SCOPES = frozenset(Scope)


def presentable(key: str) -> bool:
    """Whether a client can send `key` in a header and have it read back as written."""
    return _PRINTABLE_ASCII.fullmatch(key) is not None


def _digest(text: str) -> bytes:
    # compared as fixed-length digests, so the comparison's time says nothing about
    # the length of any key
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def same_secret(secret: str, presented: str) -> bool:
    """Whether `presented` is `secret`, compared in constant time as digests: the time
    taken says nothing about either one's length or where they first differ."""
    return hmac.compare_digest(_digest(secret), _digest(presented))


@attrs.frozen
class ApiKey:
    name: str
    digest: bytes = attrs.field(repr=False)
    scopes: frozenset[Scope]
    # unfinished jobs this key may have at once (None: only the queue's own limit)
    max_queued: int | None = None
    # its share of turns among queued jobs for one model (`policy.turn_for`)
    weight: int = 1

    @property
    def admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def allows(self, needed: frozenset[Scope]) -> bool:
        return bool(self.scopes & needed)


@attrs.frozen
class KeyRing:
    keys: tuple[ApiKey, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, presented: str | None) -> ApiKey | None:
        """The key `presented` is, compared in constant time against every key."""
        if presented is None:
            return None
        candidate = _digest(presented)
        found: ApiKey | None = None
        for key in self.keys:
            # no early exit: every key is compared whatever matched
            if hmac.compare_digest(candidate, key.digest):
                found = key
        return found

    def names(self) -> list[str]:
        return [k.name for k in self.keys]


def parse_keys(text: str, source: str = "keys file") -> KeyRing:
    """The key ring a keys file describes; raises KeysError naming the bad line."""
    keys: list[ApiKey] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        parts = line.split()
        if len(parts) < 3 or any("=" not in item for item in parts[3:]):
            raise KeysError(f"{where}: expected `NAME KEY SCOPE[,SCOPE...] [FIELD=VALUE ...]`")
        name, secret, scope_text = parts[:3]
        if not _NAME.match(name):
            raise KeysError(f"{where}: name must be 1-64 letters, digits or _.@-")
        if name in names:
            raise KeysError(f"{where}: the name {name!r} is used twice")
        if len(secret) < MIN_KEY_LENGTH:
            raise KeysError(
                f"{where}: the key of {name!r} is shorter than {MIN_KEY_LENGTH} characters"
            )
        if not presentable(secret):
            raise KeysError(
                f"{where}: the key of {name!r} holds characters other than printable ASCII,"
                " which a client cannot send in a header"
            )
        scopes: set[Scope] = set()
        for item in scope_text.split(","):
            try:
                scopes.add(Scope(item.strip().lower()))
            except ValueError:
                allowed = ", ".join(s.value for s in Scope)
                raise KeysError(f"{where}: unknown scope {item!r} (one of {allowed})") from None
        if Scope.ADMIN in scopes:
            scopes = set(ALL_SCOPES)
        digest = _digest(secret)
        if digest in digests:
            raise KeysError(f"{where}: the key of {name!r} is also another name's key")
        fields = _fields(parts[3:], f"{where} ({name})")
        names.add(name)
        digests.add(digest)
        keys.append(ApiKey(name, digest, frozenset(scopes), **fields))
    return KeyRing(tuple(keys))


# the optional fields after a key's scopes, each a whole number from 1 to its largest
KEY_FIELDS = {"max_queued": 10**9, "weight": MAX_WEIGHT}
_WHOLE = re.compile(r"[0-9]{1,10}")


def _fields(items: list[str], where: str) -> dict[str, int]:
    """The `FIELD=VALUE` items after a key's scopes, checked (the message names the line
    and the key's name, never the key)."""
    out: dict[str, int] = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or field not in KEY_FIELDS:
            # the field's name only: what follows `=` could be anything, a key included
            known = ", ".join(f"{f}=N" for f in KEY_FIELDS)
            raise KeysError(f"{where}: unknown field {field[:32]!r} (known: {known})")
        if field in out:
            raise KeysError(f"{where}: {field} is given twice")
        largest = KEY_FIELDS[field]
        if not _WHOLE.fullmatch(value) or not 1 <= int(value) <= largest:
            raise KeysError(f"{where}: {field} must be a whole number from 1 to {largest}")
        out[field] = int(value)
    return out


def presented_key(authorization: str | None, service_key: str | None) -> str | None:
    """The key a request carries: `Authorization: Bearer KEY` or `X-Service-Key: KEY`."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if service_key and service_key.strip():
        return service_key.strip()
    return None


# -- which scope each route needs ------------------------------------------------------

# the dashboard's page and assets hold no data (it asks /queue with a key)
UI_PATHS = frozenset({"/ui", "/ui/", "/ui/index.html", "/ui/app.js", "/ui/app.css"})
OPEN_PATHS = frozenset({"/health", "/ready"}) | UI_PATHS
INFERENCE_PATHS = frozenset(
    {
        "/",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/version",
        "/api/tags",
        "/api/ps",
        "/api/status",
        "/api/show",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
    }
)
ADMIN_PATHS = frozenset({"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"})

_INFERENCE = frozenset({Scope.INFERENCE})
_JOBS = frozenset({Scope.JOBS})
_ADMIN = frozenset({Scope.ADMIN})


def required_scopes(method: str, path: str) -> frozenset[Scope] | None:
    """The scopes of which a key needs one to call `method path`; None: no key needed.

    Paths foreman does not serve need some key, so an unknown caller cannot map routes.
    """
    if path in OPEN_PATHS:
        return None
    if path in INFERENCE_PATHS or path.startswith("/v1/models/"):
        return _INFERENCE
    if path in ADMIN_PATHS or path.startswith("/api/blobs/"):
        return _ADMIN
    if path == "/metrics":
        return _ADMIN
    if path == "/jobs" and method == "DELETE":
        return _ADMIN
    if path == "/jobs" or path.startswith("/jobs/") or path == "/openapi.json":
        return _JOBS
    # /queue and /queue/events (the dashboard's data) take any key, as does anything
    # foreman does not serve
    return ALL_SCOPES


# -- the file --------------------------------------------------------------------------


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class KeyFile:
    """The key ring in force, read from a file (or none: open access)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.ring = KeyRing()
        self._seen: tuple[int, int, int, int] | None = None
        self._on_reload: list[Callable[[], None]] = []

    def on_reload(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each reload that put new keys in force (e.g. to have
        open event streams look at once whether their key still stands)."""
        self._on_reload.append(listener)

    def load(self) -> KeyRing:
        """Read the file; raises KeysError (used at start, where a bad file is fatal)."""
        if self.path is None:
            return self.ring
        seen = _signature(self.path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise KeysError(f"cannot read keys file {self.path}: {reason or exc}") from None
        ring = parse_keys(text, str(self.path))
        if not ring.enabled:
            raise KeysError(f"keys file {self.path} holds no keys")
        self.ring = ring
        self._seen = seen
        return ring

    def reload(self) -> bool:
        """Read the file again; on any error keep the keys in force and log why."""
        if self.path is None:
            return False
        try:
            ring = self.load()
        except KeysError as exc:
            self._seen = _signature(self.path)
            log.error("%s; keeping the %d keys already loaded", exc, len(self.ring.keys))
            return False
        log.info("keys reloaded from %s: %s", self.path, ", ".join(ring.names()))
        for listener in self._on_reload:
            listener()
        return True

    def changed(self) -> bool:
        return self.path is not None and _signature(self.path) != self._seen


# how often the keys file is looked at for changes
KEY_FILE_POLL = 2.0


async def watch_key_file(keys: KeyFile, interval: float = KEY_FILE_POLL) -> None:
    """Reload the keys whenever the file changes (polled: works on every file system
    and for editors that replace the file)."""
    if keys.path is None:
        return
    while True:
        await trio.sleep(interval)
        if keys.changed():
            keys.reload()


__all__ = [
    "KEY_FILE_POLL",
    "ApiKey",
    "KeyFile",
    "KeyRing",
    "KeysError",
    "Scope",
    "parse_keys",
    "presentable",
    "presented_key",
    "required_scopes",
    "same_secret",
    "watch_key_file",
]
