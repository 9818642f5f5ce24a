"""StubConfig: every knob of the stub, validated in one place.

Frozen; run-time changes (POST /_stub/config, StubOllama.configure) build a new config with
`apply_changes`, so a half-applied update can never be observed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from .catalogue import DEFAULT_CHAT_MODELS, DEFAULT_EMBED_MODELS

# 4 requests at once then take 1.3x as long per token: about 3.1x the throughput of one.
DEFAULT_BATCH_SLOWDOWN = 0.1


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must not be negative")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive")


def _keep_alive(value: float) -> float:
    seconds = float(value)
    return math.inf if seconds < 0 else seconds


def _names(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(n.strip() for n in value.split(",") if n.strip())
    if not isinstance(value, list | tuple):
        raise TypeError("model lists must be a sequence of names")
    return tuple(str(n) for n in value)


@attrs.frozen(kw_only=True)
class StubConfig:
    """Settings of one stub Ollama; delays are seconds and default to 0 (as fast as possible)."""

    chat_models: tuple[str, ...] = attrs.field(default=DEFAULT_CHAT_MODELS, converter=_names)
    embed_models: tuple[str, ...] = attrs.field(default=DEFAULT_EMBED_MODELS, converter=_names)
    load_delay: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    embed_load_delay: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    token_delay: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    # Like OLLAMA_NUM_PARALLEL: how many requests the loaded chat model serves at once.
    parallel: int = attrs.field(default=1, validator=_positive)
    # Each token takes token_delay * (1 + batch_slowdown * (running - 1)); see scheduler.py.
    batch_slowdown: float = attrs.field(
        default=DEFAULT_BATCH_SLOWDOWN, converter=float, validator=_non_negative
    )
    embed_delay: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    tokens: int = attrs.field(default=8, validator=_non_negative)
    embedding_dims: int = attrs.field(default=8, validator=_positive)
    default_keep_alive: float = attrs.field(default=300.0, converter=_keep_alive)
    default_num_ctx: int = attrs.field(default=4096, validator=_positive)
    check_host: bool = True
    version: str = "0.33.0-stub"
    record_limit: int = attrs.field(default=100_000, validator=_positive)

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["chat_models"] = list(self.chat_models)
        data["embed_models"] = list(self.embed_models)
        if math.isinf(self.default_keep_alive):
            data["default_keep_alive"] = -1
        return data


# What can change while the stub runs; the catalogue changes through /api/pull, copy, delete.
RUNTIME_SETTINGS: dict[str, type] = {
    "load_delay": float,
    "embed_load_delay": float,
    "token_delay": float,
    "parallel": int,
    "batch_slowdown": float,
    "embed_delay": float,
    "tokens": int,
    "embedding_dims": int,
    "default_keep_alive": float,
    "default_num_ctx": int,
    "check_host": bool,
}


def apply_changes(config: StubConfig, changes: Mapping[str, Any]) -> StubConfig:
    """A new config with `changes` applied; ValueError (with a readable reason) if invalid."""
    values: dict[str, Any] = {}
    for key, value in changes.items():
        wanted = RUNTIME_SETTINGS.get(key)
        if wanted is None:
            raise ValueError(f"{key} cannot be changed at run time")
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if wanted is bool and not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false")
        if wanted is int and not (numeric and float(value).is_integer()):
            raise ValueError(f"{key} must be an integer")
        if wanted is float and not numeric:
            raise ValueError(f"{key} must be a number")
        values[key] = int(value) if wanted is int else value
    try:
        return attrs.evolve(config, **values)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
