"""The Ollama servers foreman drives, as it knows them now: one `Member` per upstream.

Each member's worker keeps its member up to date (online, the chat model it holds, the
jobs it runs); the relayed routes read the members to choose where a request goes, and
record which embedding models each upstream holds. Nothing here talks to the database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import attrs
import trio

from foreman.policy import Lane, LoadCosts
from foreman.residency import normalise_model
from foreman.upstream import Upstream, UpstreamError
from foreman.upstream_specs import UpstreamSpec

log = logging.getLogger("foreman.fleet")

# how often an upstream's model list (/api/tags) is read again
TAGS_REFRESH_SECONDS = 60.0
# how often the measured costs of loads and jobs are read again from the store
COSTS_REFRESH_SECONDS = 30.0


@attrs.define(eq=False)
class Member:
    """One upstream: its configuration, its connection pools and what is known of it."""

    spec: UpstreamSpec
    # the relayed routes' pool (embeddings, pulls, model information)
    relay: Upstream
    # readiness probes and model-list refreshes: a flood of relayed calls cannot take it
    probes: Upstream
    # the worker's view: whether it answers, the chat residency key it holds (or is
    # loading), and the chat/generate jobs in flight on it
    online: bool = False
    resident: str | None = None
    loading: bool = False
    # the key being loaded: the placement counts it as held from the claim on
    loading_key: str | None = None
    running: int = 0
    # normalised names its /api/tags listed at the last refresh (None: never read), and
    # when that was (trio time)
    tags: frozenset[str] | None = None
    tags_read_at: float | None = None
    # embedding models it answered for, by normalised name, with when (trio time)
    embedding_models: dict[str, float] = attrs.Factory(dict)
    # embedding requests relayed to it and not yet answered
    embeddings_in_flight: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def lists(self, model: str) -> bool:
        """Whether its last model list had `model` (any spelling)."""
        return self.tags is not None and normalise_model(model) in self.tags

    def has(self, model: str) -> bool:
        """Allowed by its configuration and listed by it."""
        return self.spec.allows(model) and self.lists(model)

    def tags_due(self, now: float) -> bool:
        return self.tags_read_at is None or now - self.tags_read_at >= TAGS_REFRESH_SECONDS

    async def refresh_tags(self) -> None:
        """Read its model list again (every minute, and after a 404). A failure keeps the
        list it had."""
        try:
            data = await self.probes.call("GET", "/api/tags")
        except UpstreamError as err:
            log.debug("upstream %s: cannot read its models (%s)", self.name, err)
            return
        models = data.get("models") if isinstance(data, dict) else None
        names = set()
        for entry in models or []:
            if not isinstance(entry, dict):
                continue
            name = entry.get("name") or entry.get("model")
            if isinstance(name, str) and name.strip():
                names.add(normalise_model(name))
        self.tags = frozenset(names)
        self.tags_read_at = trio.current_time()


@attrs.define(eq=False)
class Fleet:
    """Every upstream, in configuration order (the first is the default for calls that
    any upstream can answer)."""

    members: tuple[Member, ...]
    # one placement at a time, so each sees the residency the others' claims left
    claim_lock: trio.Lock = attrs.Factory(trio.Lock)
    # what loads and jobs took lately, for the placement (see `policy.LoadCosts`)
    costs: LoadCosts = attrs.Factory(LoadCosts)
    costs_read_at: float | None = None

    def costs_due(self, now: float) -> bool:
        return self.costs_read_at is None or now - self.costs_read_at >= COSTS_REFRESH_SECONDS

    def set_costs(self, costs: LoadCosts, now: float) -> None:
        self.costs = costs
        self.costs_read_at = now

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def by_name(self, name: str) -> Member | None:
        for member in self.members:
            if member.name == name:
                return member
        return None

    def healthy(self) -> list[Member]:
        return [m for m in self.members if m.online]

    def listing(self, model: str) -> list[Member]:
        """The healthy members whose configuration allows `model` and whose model list
        has it."""
        return [m for m in self.members if m.online and m.has(model)]

    def known_anywhere(self, model: str) -> bool:
        """Whether any member's model list has `model` (healthy or not)."""
        return any(m.lists(model) for m in self.members)

    def lane(self, member: Member) -> Lane:
        """A member as the placement rule sees it, with what it may serve."""
        held = member.loading_key or member.resident
        return Lane(
            member.name,
            member.spec.slots,
            held,
            member.running,
            member.loading,
            serves=lambda model: self.may_serve(member, model),
        )

    def may_serve(self, member: Member, model: str) -> bool:
        """Whether a job for `model` may run on `member`: its configuration allows it, and
        its list has the model, or no upstream's list does (then the upstream's own 404,
        relayed as it is, is the answer, as with a single Ollama)."""
        if not member.spec.allows(model):
            return False
        return member.tags is None or member.lists(model) or not self.known_anywhere(model)
