"""What the configuration says about each Ollama server foreman drives (an "upstream").

Pure. `config` builds these from `[[upstream]]` tables, repeated `--ollama` flags or a
comma-separated `FOREMAN_OLLAMA_URL`; the fleet, the workers and the routes read them.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import attrs

from foreman.residency import normalise_model


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


def default_name(url: str) -> str:
    """host:port of an upstream's URL (the default name)."""
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0]


def specs_from_urls(urls: str) -> tuple[UpstreamSpec, ...]:
    """One spec per comma-separated URL (already checked), slots 1, no model list."""
    return tuple(
        UpstreamSpec(url=url, name=default_name(url))
        for url in (part.strip() for part in urls.split(","))
        if url
    )
