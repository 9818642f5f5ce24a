"""Which upstream a relayed request goes to, and how the answers of several are put together.

Pure: reads the fleet's members as the workers keep them, and JSON documents the
upstreams sent; never talks to an upstream. With a single upstream every choice is that
upstream, whatever its health flag: its own answer, or its failure, is the client's, as
it was before foreman drove several.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from foreman.fleet import Fleet, Member
from foreman.residency import normalise_model


def candidates(fleet: Fleet) -> list[Member]:
    """The members a relayed request may go to: the healthy ones (a lone upstream always)."""
    if len(fleet.members) == 1:
        return list(fleet.members)
    return fleet.healthy()


def first_healthy(fleet: Fleet) -> Member | None:
    """The member that answers what any upstream can (version, status): the first healthy
    one in configuration order."""
    chosen = candidates(fleet)
    return chosen[0] if chosen else None


def holding_model(fleet: Fleet, model: str | None) -> Member | None:
    """The member to ask about `model` (/api/show, /v1/models/<model>): the first healthy
    one whose model list has it, else the first healthy one (whose 404 is the answer)."""
    chosen = candidates(fleet)
    if model is not None and len(chosen) > 1:
        for member in chosen:
            if member.has(model):
                return member
    return chosen[0] if chosen else None


def _busy(member: Member) -> tuple[int, int]:
    return (member.embeddings_in_flight, member.running)


def for_embedding(fleet: Fleet, model: str | None, avoid: Member | None = None) -> Member | None:
    """Where an embedding request for `model` (normalised) goes: a healthy member where that
    model is loaded (it answered for it), else the least busy healthy one that lists it,
    else the least busy healthy one. Busy is embeddings in flight, then chat jobs running;
    ties go to the earlier in configuration order. `avoid` is left out (a retry goes
    elsewhere)."""
    members = fleet.members
    if len(members) == 1:
        return None if members[0] is avoid else members[0]
    pool = [m for m in members if m.online and m is not avoid]
    if not pool:
        return None
    if model is not None:
        loaded = [m for m in pool if model in m.embedding_models]
        if loaded:
            return min(loaded, key=_busy)
        listing = [m for m in pool if m.has(model)]
        if listing:
            return min(listing, key=_busy)
    return min(pool, key=_busy)


def names(members: Iterable[Member]) -> str:
    return ", ".join(m.name for m in members)


def _model_name(entry: dict[str, Any], field: str) -> str | None:
    name = entry.get(field)
    if not isinstance(name, str):
        name = entry.get("model")
    return normalise_model(name) if isinstance(name, str) and name.strip() else None


def _entries(document: Any, field: str) -> list[dict[str, Any]]:
    listed = document.get(field) if isinstance(document, dict) else None
    return [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []


def union_tags(documents: Sequence[Any]) -> dict[str, Any]:
    """Ollama's /api/tags over several upstreams: each model once, by name, with the
    details the first upstream to list it gave."""
    return {"models": _union(documents, "models", "name")}


def union_openai_models(documents: Sequence[Any]) -> dict[str, Any]:
    """OpenAI's /v1/models over several upstreams: each model once, by id, as the first
    upstream to list it described it."""
    return {"object": "list", "data": _union(documents, "data", "id")}


def _union(documents: Sequence[Any], field: str, key: str) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for document in documents:
        for entry in _entries(document, field):
            name = _model_name(entry, key)
            if name is None or name in seen:
                continue
            seen.add(name)
            out.append(entry)
    return out


def all_loaded(documents: Sequence[Any]) -> dict[str, Any]:
    """Ollama's /api/ps over several upstreams: every loaded copy, upstream after upstream."""
    return {"models": [entry for d in documents for entry in _entries(d, "models")]}
