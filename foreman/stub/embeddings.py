"""POST /api/embed and the legacy POST /api/embeddings.

Both use the embedding runner only, so they run while a chat holds the chat runner. An empty
input loads the model and answers with no vectors, as Ollama does.
"""

from __future__ import annotations

from typing import Any

import trio

from .call import Call, HttpError, keep_alive_of, typed
from .catalogue import ModelInfo
from .generation import count_words, embedding_vector
from .inference import runner_options
from .slots import RunnerOptions


def embed_inputs(value: object) -> list[str]:
    """/api/embed's `input`: a string or a list of strings; "" and [] mean "just load"."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise HttpError(400, "invalid input type")


def find_embedding_model(call: Call, label: str) -> ModelInfo:
    if not label:
        raise HttpError(400, "model is required")
    model = call.state.catalogue.get(label)
    if model is None:
        raise HttpError(404, f'model "{label}" not found, try pulling it first')
    return model


async def compute(
    call: Call,
    model: ModelInfo,
    runner: RunnerOptions,
    keep_alive: float | None,
    inputs: list[str],
    dims: int,
) -> tuple[list[list[float]], dict[str, int]]:
    """Embed `inputs` on the embedding runner; returns the vectors and Ollama's metrics."""
    entry = call.entry
    entry.runner_options = runner.as_dict()
    async with call.state.scheduler.embedding(entry, model, runner, keep_alive):
        vectors = [embedding_vector(model.name, text, dims) for text in inputs]
    now = trio.current_time()
    assert entry.start is not None
    waited = (entry.start - entry.arrival + entry.load_seconds) if entry.loaded else 0.0
    load_ns = max(int(waited * 1e9), 1_000_000)
    stats = {
        "total_duration": max(int((now - entry.arrival) * 1e9), load_ns + len(inputs) * 500_000),
        "load_duration": load_ns,
        "prompt_eval_count": sum(count_words(text) for text in inputs),
    }
    return vectors, stats


def dimensions_of(call: Call, body: dict[str, Any], go_struct: str) -> int:
    dimensions = typed(body, "dimensions", go_struct, "int")
    if dimensions is None or dimensions == 0:
        return call.state.config.embedding_dims
    if dimensions < 0:
        raise HttpError(400, "dimensions must be greater than 0")
    return int(dimensions)


async def embed(call: Call) -> None:
    s = "EmbedRequest"
    body = call.body(s)
    label = typed(body, "model", s, "string") or ""
    inputs = embed_inputs(body.get("input"))
    typed(body, "truncate", s, "bool")
    options = typed(body, "options", s, "map[string]interface {}")
    keep_alive = keep_alive_of(body)
    dims = dimensions_of(call, body, s)
    model = find_embedding_model(call, label)
    runner = runner_options(call, options)
    if not inputs:
        await load_embedding(call, model, runner, keep_alive)
        await call.send_json({"model": label, "embeddings": []})
        return
    vectors, stats = await compute(call, model, runner, keep_alive, inputs, dims)
    call.entry.tokens = len(vectors)
    await call.send_json({"model": label, "embeddings": vectors, **stats})


async def load_embedding(
    call: Call, model: ModelInfo, runner: RunnerOptions, keep_alive: float | None
) -> None:
    call.entry.runner_options = runner.as_dict()
    scheduler = call.state.scheduler
    await scheduler.load(scheduler.embed, call.entry, model, runner, keep_alive)
    call.entry.done_reason = "load"


async def embeddings(call: Call) -> None:
    s = "EmbeddingRequest"
    body = call.body(s)
    label = typed(body, "model", s, "string") or ""
    prompt = typed(body, "prompt", s, "string") or ""
    options = typed(body, "options", s, "map[string]interface {}")
    keep_alive = keep_alive_of(body)
    model = find_embedding_model(call, label)
    runner = runner_options(call, options)
    if not prompt:
        await load_embedding(call, model, runner, keep_alive)
        await call.send_json({"embedding": []})
        return
    dims = call.state.config.embedding_dims
    vectors, _ = await compute(call, model, runner, keep_alive, [prompt], dims)
    call.entry.tokens = 1
    await call.send_json({"embedding": vectors[0]})
