"""What the configuration says about each Ollama server foreman drives (an "upstream").

Pure. `config` builds these from `[[upstream]]` tables, repeated `--ollama` flags or a
comma-separated `FOREMAN_OLLAMA_URL`; the fleet, the workers and the routes read them.
The checks here raise `ValueError` with the reason only; `config` adds where the value
was given (the flag, the variable, the file) to make the one line foreman stops with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

import attrs

from foreman.residency import normalise_model

# the keys an [[upstream]] table may hold
TABLE_KEYS = ("url", "name", "slots", "models")
# names travel in logs, metric labels, job JSON and the X-Foreman-Upstream header:
# visible ASCII without spaces, short enough to read
_NAME = re.compile(r"[!-~]{1,64}")


@attrs.frozen
class UpstreamSpec:
    """One Ollama server: where it is, what it is called, how many generations it runs at
    once (its OLLAMA_NUM_PARALLEL), and which models it may serve."""

    url: str
    # unique among the upstreams; host:port of the URL unless configured
    name: str
    slots: int = 1
    # globs over normalised model names ("llama3*"); None: whatever its /api/tags lists
    models: tuple[str, ...] | None = None

    def allows(self, model: str) -> bool:
        """Whether the configuration lets this upstream serve `model` (any spelling).

        A glob without a tag also matches the tagged names (`llama3` matches
        `llama3:latest`, as Ollama's own names do)."""
        if self.models is None:
            return True
        name = normalise_model(model)
        return any(
            fnmatchcase(name, pattern) or fnmatchcase(name, normalise_model(pattern))
            for pattern in self.models
        )


class BadURL(ValueError):
    """One URL of a comma-separated list is bad: `part` is that URL as given, so the line
    foreman stops with can quote it rather than the whole list."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(reason)
        self.part = part


def default_name(url: str) -> str:
    """host:port of an upstream's URL (the default name), without any user:password@ (a
    name is logged and shown; a password must not be)."""
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0].rpartition("@")[2]


def parse_url(raw: str) -> str:
    """An Ollama base URL: http or https with a host and a valid port; no trailing slash."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - validates the port number
    except ValueError as exc:
        raise ValueError("has an invalid port") from exc
    return raw.strip().rstrip("/")


def parse_url_list(raw: str) -> str:
    """One URL or several separated by commas, each checked, joined by commas again.

    Their default names (host:port) must differ: URLs given this way have no other name."""
    parts = raw.split(",")
    urls: list[str] = []
    for part in parts:
        if not part.strip() and len(parts) > 1:
            raise BadURL(raw, "has an empty URL between its commas")
        try:
            urls.append(parse_url(part))
        except ValueError as exc:
            if len(parts) == 1:
                raise
            raise BadURL(part.strip(), str(exc)) from None
    clash = duplicate_name(specs_from_urls(",".join(urls)))
    if clash is not None:
        name = default_name(urls[clash[1]])
        raise BadURL(
            urls[clash[1]],
            f"has the same host:port ({name}) as another URL; an upstream's name must be"
            " unique (name them in [[upstream]] tables to tell them apart)",
        )
    return ",".join(urls)


def specs_from_urls(urls: str) -> tuple[UpstreamSpec, ...]:
    """One spec per comma-separated URL (already checked), slots 1, no model list."""
    return tuple(
        UpstreamSpec(url=url, name=default_name(url))
        for url in (part.strip() for part in urls.split(","))
        if url
    )


def duplicate_name(specs: Iterable[UpstreamSpec]) -> tuple[int, int] | None:
    """The positions (from 0) of the first upstream whose name an earlier one already has,
    and of that earlier one; None when every name is unique."""
    first: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec.name in first:
            return first[spec.name], i
        first[spec.name] = i
    return None


def parse_upstream_tables(tables: object) -> tuple[UpstreamSpec, ...]:
    """The `[[upstream]]` tables of foreman.toml, checked and with unique names.

    The reason a table is refused starts with its label (`upstream 2 (gpu1): ...`)."""
    if not isinstance(tables, list) or not tables:
        raise ValueError("upstream must be one or more [[upstream]] tables")
    specs = tuple(parse_upstream_table(table, i) for i, table in enumerate(tables, 1))
    clash = duplicate_name(specs)
    if clash is not None:
        earlier, later = clash
        name = specs[later].name
        raise ValueError(
            f"{_label(tables[later], later + 1)}: name {name!r} is already the name of"
            f" upstream {earlier + 1}; each upstream needs a name of its own"
        )
    return specs


def parse_upstream_table(table: object, index: int) -> UpstreamSpec:
    """One `[[upstream]]` table (`index` counts from 1); raises ValueError naming it."""
    label = _label(table, index)
    if not isinstance(table, dict):
        raise ValueError(f"upstream {index}: must be a table ([[upstream]])")
    try:
        return _spec_of(table)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None


def _spec_of(table: dict[str, object]) -> UpstreamSpec:
    unknown = sorted(set(table) - set(TABLE_KEYS))
    if unknown:
        known = ", ".join(sorted(TABLE_KEYS))
        raise ValueError(f"unknown key {unknown[0]!r} (known: {known})")
    url = table.get("url")
    if url is None:
        raise ValueError("url is missing")
    if not isinstance(url, str):
        raise ValueError("url must be a string")
    try:
        checked = parse_url(url)
    except ValueError as exc:
        raise ValueError(f"url {url!r} {exc}") from None
    return UpstreamSpec(
        url=checked,
        name=_name(table.get("name"), checked),
        slots=_slots(table.get("slots", 1)),
        models=_models(table.get("models")),
    )


def _name(raw: object, url: str) -> str:
    if raw is None:
        return default_name(url)
    if not isinstance(raw, str) or not _NAME.fullmatch(raw):
        raise ValueError("name must be 1 to 64 visible ASCII characters, without spaces")
    return raw


def _slots(raw: object) -> int:
    # TOML's true is a bool, and bool is an int to Python: not a number of slots
    if type(raw) is not int or raw < 1:
        raise ValueError("slots must be a whole number of at least 1")
    return raw


def _models(raw: object) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, list) and raw and all(isinstance(g, str) and g.strip() for g in raw):
        return tuple(str(g).strip() for g in raw)
    raise ValueError('models must be a non-empty list of model names or globs, such as ["llama3*"]')


def _label(table: object, index: int) -> str:
    """`upstream 2 (gpu1)`: the table's position, and its name (or the host:port of its
    URL) when it has one that can be shown."""
    if isinstance(table, dict):
        name = table.get("name")
        url = table.get("url")
        if isinstance(name, str) and _NAME.fullmatch(name):
            return f"upstream {index} ({name})"
        if isinstance(url, str) and name is None:
            try:
                return f"upstream {index} ({default_name(parse_url(url))})"
            except ValueError:
                pass
    return f"upstream {index}"
