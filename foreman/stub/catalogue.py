"""The models the stub pretends to have installed, and how Ollama matches their names.

Pure: facts about models (size, family, digest...) are fixed for the well-known defaults and
derived from a hash of the name for anything else, so every listing is reproducible.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator

import attrs

from .clock import wall_seconds

DEFAULT_CHAT_MODELS: tuple[str, ...] = (
    "llama3:latest",
    "qwen2.5:7b",
    "mistral:latest",
    "phi3:latest",
    "gemma2:2b",
)
DEFAULT_EMBED_MODELS: tuple[str, ...] = ("nomic-embed-text:latest", "all-minilm:latest")

_REGISTRY_PREFIXES = ("registry.ollama.ai/library/", "registry.ollama.ai/", "library/")
_EMBED_HINTS = ("embed", "minilm", "bge", "e5-", "gte-", "arctic")

# family, parameter size, quantization, bytes, context length, embedding length
_KNOWN: dict[str, tuple[str, str, str, int, int, int]] = {
    "llama3:latest": ("llama", "8.0B", "Q4_0", 4_661_224_676, 8192, 4096),
    "qwen2.5:7b": ("qwen2", "7.6B", "Q4_K_M", 4_683_087_332, 32768, 3584),
    "mistral:latest": ("llama", "7.2B", "Q4_0", 4_113_301_824, 32768, 4096),
    "phi3:latest": ("phi3", "3.8B", "Q4_0", 2_176_178_913, 131072, 3072),
    "gemma2:2b": ("gemma2", "2.6B", "Q4_0", 1_629_518_495, 8192, 2304),
    "nomic-embed-text:latest": ("nomic-bert", "137M", "F16", 274_302_450, 2048, 768),
    "all-minilm:latest": ("bert", "23M", "F16", 45_960_996, 512, 384),
}


def normalise_name(name: str) -> str:
    """Ollama's matching key: lower case, registry prefix dropped, tag defaulting to latest."""
    key = name.strip().lower()
    for prefix in _REGISTRY_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    if key and ":" not in key.rsplit("/", 1)[-1]:
        key += ":latest"
    return key


def looks_like_embedding(name: str) -> bool:
    """Guess the kind of a model pulled at run time from its name."""
    key = normalise_name(name)
    return any(hint in key for hint in _EMBED_HINTS)


@attrs.frozen
class ModelInfo:
    """One installed model; `name` is the normalised name."""

    name: str
    embedding: bool
    family: str
    parameter_size: str
    quantization_level: str
    size: int
    digest: str
    context_length: int
    embedding_length: int
    modified_at: float

    @property
    def capabilities(self) -> list[str]:
        return ["embedding"] if self.embedding else ["completion", "tools"]

    def details(self) -> dict[str, object]:
        """The `details` object of /api/tags, /api/ps and /api/show."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


def make_model(name: str, *, embedding: bool, modified_at: float | None = None) -> ModelInfo:
    """Describe a model, from the table for the defaults or from its name otherwise."""
    key = normalise_name(name)
    digest = hashlib.sha256(key.encode()).hexdigest()
    when = wall_seconds() if modified_at is None else modified_at
    known = _KNOWN.get(key)
    if known is not None:
        family, params, quant, size, ctx, width = known
        return ModelInfo(key, embedding, family, params, quant, size, digest, ctx, width, when)
    base = key.rsplit("/", 1)[-1].split(":", 1)[0]
    family = re.sub(r"[^a-z]+.*$", "", base) or base or "llama"
    tag = key.rsplit(":", 1)[-1]
    sized = re.fullmatch(r"(\d+(?:\.\d+)?)([bm])", tag)
    seed = int(digest[:8], 16)
    if sized:
        params = f"{sized.group(1)}{sized.group(2).upper()}"
    else:
        params = "137M" if embedding else f"{1 + seed % 13}.{seed % 10}B"
    size = 100_000_000 + seed % 5_000_000_000 if not embedding else 50_000_000 + seed % 500_000_000
    quant = "F16" if embedding else "Q4_K_M"
    ctx, width = (2048, 768) if embedding else (8192, 4096)
    return ModelInfo(key, embedding, family, params, quant, size, digest, ctx, width, when)


class Catalogue:
    """The installed models, keyed by normalised name; /api/pull, copy and delete change it."""

    def __init__(self, models: Iterable[ModelInfo] = ()) -> None:
        self._models: dict[str, ModelInfo] = {}
        for model in models:
            self.add(model)

    @classmethod
    def from_names(cls, chat: Iterable[str], embed: Iterable[str]) -> Catalogue:
        start = wall_seconds()
        return cls(
            [make_model(n, embedding=False, modified_at=start) for n in chat]
            + [make_model(n, embedding=True, modified_at=start) for n in embed]
        )

    def get(self, name: str) -> ModelInfo | None:
        return self._models.get(normalise_name(name)) if name else None

    def add(self, model: ModelInfo) -> None:
        self._models[model.name] = model

    def remove(self, name: str) -> ModelInfo | None:
        return self._models.pop(normalise_name(name), None)

    def copy(self, source: ModelInfo, destination: str) -> ModelInfo:
        clone = attrs.evolve(source, name=normalise_name(destination), modified_at=wall_seconds())
        self.add(clone)
        return clone

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(list(self._models.values()))

    def __len__(self) -> int:
        return len(self._models)
