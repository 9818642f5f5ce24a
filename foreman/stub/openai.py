"""The OpenAI-compatible routes, as Ollama's /v1 middleware serves them.

They run the same plans on the same runners as the native routes (so the text matches and the
chat runner is shared), with OpenAI's shapes: `stream` defaults to false, streams are SSE ending
in `data: [DONE]`, and errors are {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import base64
import struct
from typing import Any
from urllib.parse import unquote

from .call import JSON, SSE, Call, HttpError, typed
from .catalogue import ModelInfo
from .clock import wall_seconds
from .embeddings import compute
from .generation import count_words
from .inference import Plan, chat_plan, generate_plan, runner_options
from .shapes import dumps
from .streams import LineStream, pace

_FINGERPRINT = "fp_ollama"


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _event(obj: object) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def _chat_model(call: Call, label: str) -> ModelInfo:
    if not label:
        raise HttpError(400, "model is required")
    model = call.state.catalogue.get(label)
    if model is None:
        raise HttpError(404, f"model '{label}' not found")
    return model


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise HttpError(400, "stream must be a boolean")
    options = body.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    return bool(stream), usage


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The native options the middleware derives (max_tokens becomes num_predict)."""
    options: dict[str, Any] = {}
    if body.get("max_tokens") is not None:
        options["num_predict"] = body["max_tokens"]
    if body.get("seed") is not None:
        options["seed"] = body["seed"]
    return options


def _usage(plan: Plan) -> dict[str, int]:
    completion = len(plan.pieces)
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
    }


async def chat_completions(call: Call) -> None:
    body = call.body("ChatCompletionRequest")
    label = typed(body, "model", "ChatCompletionRequest", "string") or ""
    messages = typed(body, "messages", "ChatCompletionRequest", "[]openai.Message") or []
    if not messages:
        raise HttpError(400, "[] is too short - 'messages'")
    stream, include_usage = _stream_options(body)
    call.entry.stream = stream
    model = _chat_model(call, label)
    if model.embedding:
        raise HttpError(400, f'"{label}" does not support chat')
    runner = runner_options(call, None)
    plan = chat_plan(call, label, model, messages, runner, None, _sampling(body))
    ident = f"chatcmpl-{call.entry.seq % 999}"
    await _run(call, plan, stream, include_usage, ident)


async def completions(call: Call) -> None:
    body = call.body("CompletionRequest")
    label = typed(body, "model", "CompletionRequest", "string") or ""
    prompt = typed(body, "prompt", "CompletionRequest", "string") or ""
    stream, include_usage = _stream_options(body)
    call.entry.stream = stream
    model = _chat_model(call, label)
    if model.embedding:
        raise HttpError(400, f'"{label}" does not support generate')
    runner = runner_options(call, None)
    ident = f"cmpl-{call.entry.seq % 999}"
    if not prompt:
        scheduler = call.state.scheduler
        await scheduler.load(scheduler.chat, call.entry, model, runner, None)
        call.entry.done_reason = "load"
        choice = {"text": "", "index": 0, "finish_reason": "load"}
        body = _envelope("text_completion", ident, label, int(wall_seconds()), [choice])
        await call.send_json(body)
        return
    plan = generate_plan(call, label, model, prompt, "", runner, None, _sampling(body), raw=True)
    await _run(call, plan, stream, include_usage, ident)


def _envelope(
    obj: str, ident: str, label: str, created: int, choices: list[Any], usage: Any = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ident,
        "object": obj,
        "created": created,
        "model": label,
        "system_fingerprint": _FINGERPRINT,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


async def _run(call: Call, plan: Plan, stream: bool, include_usage: bool, ident: str) -> None:
    entry = call.entry
    entry.runner_options = plan.options.as_dict()
    chat = plan.endpoint == "chat"
    created = int(wall_seconds())
    async with call.state.scheduler.inference(entry, plan.model, plan.options, plan.keep_alive):
        if not stream:
            for _ in plan.pieces:
                await pace(call)
                entry.tokens += 1
            text = "".join(plan.pieces)
            if chat:
                message = {"role": "assistant", "content": text}
                choice = {"index": 0, "message": message, "finish_reason": plan.done_reason}
                obj = "chat.completion"
            else:
                choice = {"text": text, "index": 0, "finish_reason": plan.done_reason}
                obj = "text_completion"
            body = _envelope(obj, ident, plan.label, created, [choice], _usage(plan))
            await call.send_json(body)
        else:
            await _stream(call, plan, include_usage, ident, created)
        entry.done_reason = plan.done_reason


async def _stream(call: Call, plan: Plan, include_usage: bool, ident: str, created: int) -> None:
    chat = plan.endpoint == "chat"
    obj = "chat.completion.chunk" if chat else "text_completion"
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    # /v1/completions puts a zero usage on every chunk when usage is asked for.
    chunk_usage = zero if include_usage and not chat else None

    def chunk(piece: str | None, finish: str | None) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {} if piece is None else {"content": piece}
            if piece is not None and out.sent == 0:
                delta = {"role": "assistant", **delta}
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"text": piece or "", "index": 0, "finish_reason": finish}
        return _envelope(obj, ident, plan.label, created, [choice], chunk_usage)

    def error_line(_: str) -> bytes:
        # Ollama's SSE writer decodes the native error line as an empty chunk and stops.
        return _event(chunk("", None))

    out = LineStream(call, SSE, error_line)
    for piece in plan.pieces:
        await pace(call)
        await out.line(_event(chunk(piece, None)))
        call.entry.tokens += 1
    await out.line(_event(chunk(None, plan.done_reason)))
    if include_usage:
        await out.line(_event(_envelope(obj, ident, plan.label, created, [], _usage(plan))))
    await out.line(b"data: [DONE]\n\n")
    await out.close()


def _embedding_inputs(value: object) -> list[str]:
    if value == "":
        return [""]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return list(value)
    raise HttpError(400, "invalid input")


async def embeddings(call: Call) -> None:
    body = call.body("EmbedRequest")
    label = typed(body, "model", "EmbedRequest", "string") or ""
    inputs = _embedding_inputs(body.get("input"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise HttpError(400, f"invalid encoding format: {encoding}")
    dimensions = typed(body, "dimensions", "EmbedRequest", "int")
    if not label:
        raise HttpError(400, "model is required")
    model = call.state.catalogue.get(label)
    if model is None:
        raise HttpError(404, f'model "{label}" not found, try pulling it first')
    dims = dimensions if dimensions and dimensions > 0 else call.state.config.embedding_dims
    runner = runner_options(call, None)
    vectors, _ = await compute(call, model, runner, None, inputs, dims)
    call.entry.tokens = len(vectors)
    data = [
        {"object": "embedding", "embedding": _encode(vector, encoding), "index": index}
        for index, vector in enumerate(vectors)
    ]
    tokens = sum(count_words(text) for text in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    await call.send_json({"object": "list", "data": data, "model": label, "usage": usage})


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _model_entry(model: ModelInfo, ident: str) -> dict[str, Any]:
    owner = ident.split("/", 1)[0] if "/" in ident else "library"
    return {"id": ident, "object": "model", "created": int(model.modified_at), "owned_by": owner}


async def list_models(call: Call) -> None:
    data = [_model_entry(model, model.name) for model in call.state.catalogue]
    await call.send_json({"object": "list", "data": data})


async def retrieve_model(call: Call) -> None:
    label = unquote(call.exchange.request.path[len("/v1/models/") :])
    model = call.state.catalogue.get(label)
    if model is None:
        raise HttpError(404, f"model '{label}' not found")
    await call.send_json(_model_entry(model, label))


async def send_error(call: Call, error: HttpError) -> None:
    """Render an error in the OpenAI shape with Ollama's status."""
    await call.exchange.respond(error.status, dumps(error_body(error.status, error.message)), JSON)
