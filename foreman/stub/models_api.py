"""Ollama's model-management and status endpoints: /, version, tags, ps, show, pull, push,
create, copy, delete, blobs.

Pull and create add to the catalogue, delete removes (and unloads), so a test can exercise
foreman's handling of models appearing and disappearing.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import unquote

import trio

from .call import NDJSON, Call, HttpError, stream_flag, typed
from .catalogue import ModelInfo, looks_like_embedding, make_model
from .shapes import ndjson_line, ps_models, show_model, tags_model
from .streams import LineStream


async def root(call: Call) -> None:
    await call.send_text("Ollama is running")


async def version(call: Call) -> None:
    await call.send_json({"version": call.state.config.version})


async def status(call: Call) -> None:
    await call.send_json({"cloud": {"disabled": True, "source": "config"}})


async def tags(call: Call) -> None:
    models = sorted(call.state.catalogue, key=lambda m: (-m.modified_at, m.name))
    await call.send_json({"models": [tags_model(model) for model in models]})


async def ps(call: Call) -> None:
    scheduler = call.state.scheduler
    now = trio.current_time()
    scheduler.refresh(now)
    await call.send_json({"models": ps_models(list(scheduler.slots()), now)})


def _name_field(body: dict[str, Any], go_struct: str) -> str:
    """`model`, or the deprecated `name` that older clients still send."""
    model = typed(body, "model", go_struct, "string") or ""
    return model or typed(body, "name", go_struct, "string") or ""


async def show(call: Call) -> None:
    body = call.body("ShowRequest")
    label = _name_field(body, "ShowRequest")
    if not label:
        raise HttpError(400, "model is required")
    model = call.state.catalogue.get(label)
    if model is None:
        raise HttpError(404, f"model '{label}' not found")
    await call.send_json(show_model(model))


def _progress(model: ModelInfo, verb: str) -> list[dict[str, Any]]:
    layer = model.digest[:12]
    digest = f"sha256:{model.digest}"
    steps: list[dict[str, Any]] = [{"status": f"{verb} manifest"}]
    steps.extend(
        {"status": f"{verb} {layer}", "digest": digest, "total": model.size, "completed": completed}
        for completed in (0, model.size // 2, model.size)
    )
    if verb == "pulling":
        steps += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}]
    steps.append({"status": "success"})
    return steps


async def _send_progress(call: Call, steps: list[dict[str, Any]], stream: bool) -> None:
    if not stream:
        await call.send_json(steps[-1])
        return
    out = LineStream(call, NDJSON, lambda message: ndjson_line({"error": message}))
    for step in steps:
        await out.line(ndjson_line(step))
    await out.close()


async def pull(call: Call) -> None:
    body = call.body("PullRequest")
    label = _name_field(body, "PullRequest")
    stream = stream_flag(body, "PullRequest", default=True)
    if not label.strip():
        raise HttpError(400, "invalid model name")
    catalogue = call.state.catalogue
    model = catalogue.get(label) or make_model(label, embedding=looks_like_embedding(label))
    catalogue.add(model)
    await _send_progress(call, _progress(model, "pulling"), stream)


async def push(call: Call) -> None:
    body = call.body("PushRequest")
    label = _name_field(body, "PushRequest")
    stream = stream_flag(body, "PushRequest", default=True)
    if not label.strip():
        raise HttpError(400, "invalid model name")
    model = call.state.catalogue.get(label)
    if model is None:
        raise HttpError(404, f"model '{label}' not found")
    await _send_progress(call, _progress(model, "pushing"), stream)


async def create(call: Call) -> None:
    body = call.body("CreateRequest")
    label = _name_field(body, "CreateRequest")
    source = typed(body, "from", "CreateRequest", "string") or ""
    stream = stream_flag(body, "CreateRequest", default=True)
    if not label.strip():
        raise HttpError(400, "invalid model name")
    catalogue = call.state.catalogue
    base = catalogue.get(source) if source else None
    if base is not None:
        model = catalogue.copy(base, label)
    else:
        model = make_model(label, embedding=looks_like_embedding(label))
        catalogue.add(model)
    steps = [
        {"status": "gathering model components"},
        {"status": f"using existing layer sha256:{model.digest}"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    await _send_progress(call, steps, stream)


async def copy(call: Call) -> None:
    body = call.body("CopyRequest")
    source = typed(body, "source", "CopyRequest", "string") or ""
    destination = typed(body, "destination", "CopyRequest", "string") or ""
    model = call.state.catalogue.get(source)
    if model is None:
        raise HttpError(404, f'model "{source}" not found')
    if not destination.strip():
        raise HttpError(400, "invalid destination name")
    call.state.catalogue.copy(model, destination)
    await call.send_empty()


async def delete(call: Call) -> None:
    body = call.body("DeleteRequest")
    label = _name_field(body, "DeleteRequest")
    model = call.state.catalogue.get(label)
    if model is None:
        raise HttpError(404, f"model '{label}' not found")
    call.state.catalogue.remove(label)
    call.state.scheduler.unload(model, call.entry, reason="deleted")
    await call.send_empty()


def _digest_of(call: Call) -> str:
    return unquote(call.exchange.request.path.rsplit("/", 1)[-1])


async def blob_head(call: Call) -> None:
    await call.send_empty(200 if _digest_of(call) in call.state.blobs else 404)


async def blob_upload(call: Call) -> None:
    digest = _digest_of(call)
    actual = "sha256:" + hashlib.sha256(call.exchange.request.body).hexdigest()
    if digest != actual:
        raise HttpError(400, "digest mismatch")
    call.state.blobs.add(digest)
    await call.send_empty(201)
