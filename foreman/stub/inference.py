"""POST /api/generate and POST /api/chat: validation, load/unload replies, generation.

Checks run in Ollama's order (body, model name, unload shortcut, capability, options), so each
bad request gets the error a real Ollama gives first. `Plan` is what to generate; the /v1
routes build the same plans, which is why both families give the same text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import trio

from .call import NDJSON, Call, HttpError, keep_alive_of, stream_flag, typed
from .catalogue import ModelInfo
from .generation import (
    chat_key,
    context_ids,
    generate_key,
    prompt_tokens_chat,
    prompt_tokens_generate,
    token_budget,
    token_pieces,
)
from .shapes import (
    chat_chunk,
    chat_final,
    generate_chunk,
    generate_final,
    metrics,
    ndjson_line,
    residency_reply,
)
from .slots import OptionError, RunnerOptions
from .streams import LineStream, pace

_THINK_LEVELS = ("low", "medium", "high", "max")


@attrs.frozen
class Plan:
    """One generation: which runner it needs and the tokens it will produce."""

    endpoint: str  # "chat" or "generate"
    label: str  # the model name as the client wrote it; Ollama echoes it back
    model: ModelInfo
    options: RunnerOptions
    keep_alive: float | None
    pieces: tuple[str, ...]
    done_reason: str
    prompt_tokens: int
    context: tuple[int, ...] | None = None


def runner_options(call: Call, options: Mapping[str, Any] | None) -> RunnerOptions:
    try:
        return RunnerOptions.from_options(options or {}, call.state.config.default_num_ctx)
    except OptionError as exc:
        raise HttpError(500, str(exc)) from None


def check_think(body: Mapping[str, Any], label: str) -> None:
    """No stub model thinks: asking one to is Ollama's 400."""
    think = body.get("think")
    if think is None or think is False:
        return
    if isinstance(think, str) and think not in _THINK_LEVELS:
        levels = ", ".join(f'"{level}"' for level in _THINK_LEVELS)
        raise HttpError(400, f'invalid think value: "{think}" (must be {levels}, true, or false)')
    if not isinstance(think, bool | str):
        raise HttpError(400, f"invalid think value: {think!r}")
    raise HttpError(400, f'"{label}" does not support thinking')


def sampling_value(options: Mapping[str, Any] | None, key: str) -> object:
    return options.get(key) if options else None


def _error_line(message: str) -> bytes:
    return ndjson_line({"error": message})


async def _residency(
    call: Call,
    endpoint: str,
    label: str,
    model: ModelInfo,
    unload: bool,
    options: RunnerOptions,
    keep_alive: float | None,
) -> None:
    """Answer an empty prompt/messages request: unload at once, or load (maybe waiting)."""
    state = call.state
    if unload:
        call.entry.start = trio.current_time()
        state.scheduler.unload(model, call.entry)
        reason = "unload"
    else:
        slot = state.scheduler.embed if model.embedding else state.scheduler.chat
        call.entry.runner_options = options.as_dict()
        await state.scheduler.load(slot, call.entry, model, options, keep_alive)
        reason = "load"
    call.entry.done_reason = reason
    await call.send_json(residency_reply(endpoint, label, reason))


async def run_native(call: Call, plan: Plan, stream: bool) -> None:
    """Take the chat runner and answer with NDJSON chunks or one JSON object."""
    entry = call.entry
    entry.runner_options = plan.options.as_dict()
    async with call.state.scheduler.inference(entry, plan.model, plan.options, plan.keep_alive):
        began = trio.current_time()
        chunk = chat_chunk if plan.endpoint == "chat" else generate_chunk
        out = LineStream(call, NDJSON, _error_line) if stream else None
        for piece in plan.pieces:
            await pace(call)
            if out is not None:
                await out.line(ndjson_line(chunk(plan.label, piece)))
            entry.tokens += 1
        now = trio.current_time()
        assert entry.start is not None
        stats = metrics(
            arrival=entry.arrival,
            start=entry.start,
            loaded=entry.loaded,
            load_seconds=entry.load_seconds,
            generation_seconds=now - began,
            end=now,
            prompt_tokens=plan.prompt_tokens,
            eval_count=len(plan.pieces),
        )
        text = "" if stream else "".join(plan.pieces)
        if plan.endpoint == "chat":
            final = chat_final(plan.label, text, plan.done_reason, stats)
        else:
            context = list(plan.context) if plan.context is not None else None
            final = generate_final(plan.label, text, plan.done_reason, context, stats)
        if out is not None:
            await out.line(ndjson_line(final))
            await out.close()
        else:
            await call.send_json(final)
        entry.done_reason = plan.done_reason


async def generate(call: Call) -> None:
    s = "GenerateRequest"
    body = call.body(s)
    label = typed(body, "model", s, "string") or ""
    prompt = typed(body, "prompt", s, "string") or ""
    system = typed(body, "system", s, "string") or ""
    template = typed(body, "template", s, "string") or ""
    context = typed(body, "context", s, "[]int") or []
    raw = typed(body, "raw", s, "bool") or False
    options = typed(body, "options", s, "map[string]interface {}")
    stream = stream_flag(body, s, default=True)
    keep_alive = keep_alive_of(body)
    call.entry.stream = stream
    model = call.state.catalogue.get(label)
    if model is None:
        raise HttpError(404, f"model '{label}' not found")
    if raw and (template or system or context):
        raise HttpError(400, "raw mode does not support template, system, or context")
    if not prompt and keep_alive == 0:
        await _residency(call, "generate", label, model, True, RunnerOptions(), keep_alive)
        return
    if model.embedding:
        raise HttpError(400, f'"{label}" does not support generate')
    check_think(body, label)
    runner = runner_options(call, options)
    if not prompt:
        await _residency(call, "generate", label, model, False, runner, keep_alive)
        return
    plan = generate_plan(call, label, model, prompt, system, runner, keep_alive, options, raw)
    await run_native(call, plan, stream)


def generate_plan(
    call: Call,
    label: str,
    model: ModelInfo,
    prompt: str,
    system: str,
    runner: RunnerOptions,
    keep_alive: float | None,
    options: Mapping[str, Any] | None,
    raw: bool = False,
) -> Plan:
    """What a completion of `prompt` generates (shared with /v1/completions)."""
    key = generate_key(label, prompt, system, sampling_value(options, "seed"))
    count, reason = token_budget(call.state.config.tokens, sampling_value(options, "num_predict"))
    prompt_tokens = prompt_tokens_generate(prompt, system)
    ids = None if raw else tuple(context_ids(key, prompt_tokens + count))
    pieces = tuple(token_pieces(key, count))
    return Plan("generate", label, model, runner, keep_alive, pieces, reason, prompt_tokens, ids)


def check_messages(messages: list[Any], go_struct: str) -> None:
    for message in messages:
        if not isinstance(message, dict):
            kind = "string" if isinstance(message, str) else type(message).__name__
            raise HttpError(
                400,
                f"json: cannot unmarshal {kind} into Go struct field {go_struct}.messages "
                "of type api.Message",
            )
        typed(message, "role", "Message.messages", "string")
        typed(message, "content", "Message.messages", "string")


async def chat(call: Call) -> None:
    s = "ChatRequest"
    body = call.body(s)
    label = typed(body, "model", s, "string") or ""
    messages = typed(body, "messages", s, "[]api.Message") or []
    check_messages(messages, s)
    typed(body, "tools", s, "[]api.Tool")
    options = typed(body, "options", s, "map[string]interface {}")
    stream = stream_flag(body, s, default=True)
    keep_alive = keep_alive_of(body)
    call.entry.stream = stream
    if not label:
        raise HttpError(400, "model is required")
    model = call.state.catalogue.get(label)
    if model is None:
        raise HttpError(404, f"model '{label}' not found")
    if not messages and keep_alive == 0:
        await _residency(call, "chat", label, model, True, RunnerOptions(), keep_alive)
        return
    if model.embedding:
        raise HttpError(400, f'"{label}" does not support chat')
    check_think(body, label)
    runner = runner_options(call, options)
    if not messages:
        await _residency(call, "chat", label, model, False, runner, keep_alive)
        return
    plan = chat_plan(call, label, model, messages, runner, keep_alive, options)
    await run_native(call, plan, stream)


def chat_plan(
    call: Call,
    label: str,
    model: ModelInfo,
    messages: list[Any],
    runner: RunnerOptions,
    keep_alive: float | None,
    options: Mapping[str, Any] | None,
) -> Plan:
    """What a chat over `messages` generates (shared with /v1/chat/completions)."""
    key = chat_key(label, messages, sampling_value(options, "seed"))
    count, reason = token_budget(call.state.config.tokens, sampling_value(options, "num_predict"))
    pieces = tuple(token_pieces(key, count))
    return Plan(
        "chat", label, model, runner, keep_alive, pieces, reason, prompt_tokens_chat(messages)
    )
