"""Deterministic "model output": text tokens and embedding vectors derived from a hash.

Pure. The same model and prompt (or messages, plus options.seed) always give the same tokens,
whichever route asked (/api/chat and /v1/chat/completions agree, as do /api/generate and
/v1/completions), so tests can compute what a relayed answer must be with `expected_text`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

from .catalogue import normalise_name

DEFAULT_TOKENS = 8
DEFAULT_DIMS = 8

_VOCAB = (
    "amber", "anchor", "apple", "arrow", "autumn", "basil", "beacon", "birch", "bright", "brook",
    "canyon", "cedar", "cinder", "clover", "coral", "crisp", "dawn", "delta", "ember", "fable",
    "falcon", "fern", "field", "flint", "frost", "garnet", "glade", "granite", "harbor", "hazel",
    "heron", "indigo", "island", "ivory", "juniper", "kestrel", "lantern", "lilac", "linen",
    "maple",
    "marble", "meadow", "mist", "moss", "nectar", "north", "oak", "ochre", "olive", "orchid",
    "pebble", "pine", "quartz", "quiet", "raven", "river", "saffron", "sage", "shore", "silver",
    "slate", "spruce", "summit", "thistle",
)  # fmt: skip

CHAT_PATHS = frozenset({"/api/chat", "/v1/chat/completions", "chat"})
GENERATE_PATHS = frozenset({"/api/generate", "/v1/completions", "generate"})


def _hash_bytes(key: str) -> Iterator[int]:
    """An endless byte stream from sha256 in counter mode."""
    counter = 0
    while True:
        yield from hashlib.sha256(f"{counter}\x00{key}".encode()).digest()
        counter += 1


def _canonical(*parts: object) -> str:
    return json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def native_messages(messages: Sequence[Any]) -> list[tuple[str, str]]:
    """(role, text) pairs as Ollama sees them; OpenAI part arrays become several messages."""
    pairs: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = str(message.get("role") or "").lower()
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "text":
                    pairs.append((role, str(part.get("text") or "")))
                else:
                    pairs.append((role, ""))
        else:
            pairs.append((role, content if isinstance(content, str) else ""))
    return pairs


def _seed(value: object) -> object:
    return None if value is None or value == -1 else value


def chat_key(model: str, messages: Sequence[Any], seed: object = None) -> str:
    return _canonical("chat", normalise_name(model), native_messages(messages), _seed(seed))


def generate_key(model: str, prompt: str, system: str = "", seed: object = None) -> str:
    return _canonical("generate", normalise_name(model), prompt, system, _seed(seed))


def token_budget(tokens: int, limit: object) -> tuple[int, str]:
    """How many tokens to emit and the done_reason, given num_predict / max_tokens.

    A negative or absent limit means "until the natural end"; a limit below the natural length
    stops early with done_reason "length".
    """
    if isinstance(limit, int | float) and not isinstance(limit, bool) and 0 <= limit < tokens:
        return int(limit), "length"
    return tokens, "stop"


def token_pieces(key: str, count: int) -> list[str]:
    """The streamed pieces: a capitalised first word, then " word" for each later token."""
    words = [_VOCAB[b % len(_VOCAB)] for b in islice(_hash_bytes(key), count)]
    return [w.capitalize() if i == 0 else " " + w for i, w in enumerate(words)]


def context_ids(key: str, count: int) -> list[int]:
    """Token ids for generate's `context` field."""
    stream = _hash_bytes("ctx\x00" + key)
    return [
        int.from_bytes(bytes(islice(stream, 2)), "big") % 32000 + 1 for _ in range(max(0, count))
    ]


def count_words(text: str) -> int:
    return max(1, len(text.split()))


def prompt_tokens_chat(messages: Sequence[Any]) -> int:
    return sum(count_words(text) + 4 for _, text in native_messages(messages)) + 1


def prompt_tokens_generate(prompt: str, system: str = "") -> int:
    return count_words(prompt) + (count_words(system) if system else 0) + 1


def embedding_vector(model: str, text: str, dims: int) -> list[float]:
    """An L2-normalised vector of `dims` floats; a prefix of a longer one, renormalised."""
    stream = _hash_bytes(_canonical("embed", normalise_name(model), text))
    raw = [int.from_bytes(bytes(islice(stream, 4)), "big") / 2**31 - 1.0 for _ in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def expected_embedding(model: str, text: str, *, dims: int = DEFAULT_DIMS) -> list[float]:
    """The vector the stub returns for `text` (test helper)."""
    return embedding_vector(model, text, dims)


def _options(body: Mapping[str, Any]) -> Mapping[str, Any]:
    options = body.get("options")
    return options if isinstance(options, Mapping) else {}


def expected_text(endpoint: str, body: Mapping[str, Any], *, tokens: int = DEFAULT_TOKENS) -> str:
    """The full answer text the stub gives for this request body on this endpoint.

    `endpoint` is a path ("/api/chat", "/api/generate", "/v1/chat/completions",
    "/v1/completions") or "chat"/"generate"; `tokens` must match the stub's configured count.
    """
    model = str(body.get("model") or "")
    openai = endpoint.startswith("/v1/")
    seed = body.get("seed") if openai else _options(body).get("seed")
    limit = body.get("max_tokens") if openai else _options(body).get("num_predict")
    if endpoint in CHAT_PATHS:
        messages = body.get("messages")
        key = chat_key(model, messages if isinstance(messages, list) else [], seed)
    elif endpoint in GENERATE_PATHS:
        prompt = body.get("prompt")
        system = "" if openai else body.get("system")
        key = generate_key(
            model,
            prompt if isinstance(prompt, str) else "",
            system if isinstance(system, str) else "",
            seed,
        )
    else:
        raise ValueError(f"not a text endpoint: {endpoint!r}")
    count, _ = token_budget(tokens, limit)
    return "".join(token_pieces(key, count))
