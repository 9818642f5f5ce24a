"""Ollama's native response bodies, as dicts in Go's field order.

Pure apart from reading the wall clock, which only `created_at`, `expires_at` and `modified_at`
strings use (everything else is trio's monotonic time). Metrics are omitted when zero and
present only on final chunks, as Go's `omitempty` does.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from typing import Any

from .catalogue import ModelInfo
from .clock import wall_ns
from .slots import Slot

_NS = 1_000_000_000
_FOREVER_NS = 2**63 - 1  # Go's math.MaxInt64 nanoseconds: "about 292 years"


def dumps(obj: object) -> bytes:
    """Compact JSON, the way Go's encoder writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def ndjson_line(obj: object) -> bytes:
    return dumps(obj) + b"\n"


def rfc3339_utc(ns: int) -> str:
    """RFC 3339 in UTC with trailing zeros of the nanoseconds trimmed, like Go's RFC3339Nano."""
    seconds, fraction = divmod(ns, _NS)
    year_cap = 253_402_300_799  # 9999-12-31T23:59:59Z
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(min(seconds, year_cap)))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def created_at() -> str:
    return rfc3339_utc(wall_ns())


def local_time(seconds: float) -> str:
    """A file modification time as Ollama shows it: local time with its UTC offset."""
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat()


def metrics(
    *,
    arrival: float,
    start: float,
    loaded: bool,
    load_seconds: float,
    generation_seconds: float,
    end: float,
    prompt_tokens: int,
    eval_count: int,
) -> dict[str, int]:
    """The final chunk's timing fields, in integer nanoseconds.

    As in Ollama, load_duration covers waiting for a runner to be handed over plus the load
    itself; a request that found its model resident only waited for its turn, which Ollama
    does not count. Durations too short to measure get small plausible values.
    """
    load_ns = int(((start - arrival) + load_seconds) * _NS) if loaded else 0
    load_ns = max(load_ns, 1_000_000)
    prompt_ns = prompt_tokens * 200_000
    eval_ns = max(int(generation_seconds * _NS), eval_count * 1_000_000)
    total_ns = max(int((end - arrival) * _NS), load_ns + prompt_ns + eval_ns)
    fields = {
        "total_duration": total_ns,
        "load_duration": load_ns,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": eval_count,
        "eval_duration": eval_ns if eval_count else 0,
    }
    return {key: value for key, value in fields.items() if value}


def generate_chunk(model: str, piece: str) -> dict[str, Any]:
    return {"model": model, "created_at": created_at(), "response": piece, "done": False}


def chat_chunk(model: str, piece: str) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": created_at(),
        "message": {"role": "assistant", "content": piece},
        "done": False,
    }


def generate_final(
    model: str, text: str, done_reason: str, context: list[int] | None, stats: dict[str, int]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "created_at": created_at(),
        "response": text,
        "done": True,
        "done_reason": done_reason,
    }
    if context is not None:
        body["context"] = context
    body.update(stats)
    return body


def chat_final(model: str, text: str, done_reason: str, stats: dict[str, int]) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": created_at(),
        "message": {"role": "assistant", "content": text},
        "done": True,
        "done_reason": done_reason,
        **stats,
    }


def residency_reply(endpoint: str, model: str, done_reason: str) -> dict[str, Any]:
    """The single-object reply to an empty prompt/messages request ("load" or "unload")."""
    if endpoint == "chat":
        return chat_final(model, "", done_reason, {})
    return generate_final(model, "", done_reason, None, {})


def _runner_size(model: ModelInfo, num_ctx: int) -> int:
    return model.size + num_ctx * model.embedding_length * 32


def ps_models(slots: list[Slot], now: float) -> list[dict[str, Any]]:
    """/api/ps entries, longest remaining keep-alive first; `now` is monotonic seconds."""
    wall = wall_ns()
    rows: list[tuple[float, dict[str, Any]]] = []
    for slot in slots:
        if slot.model is None:
            continue
        model = slot.model
        num_ctx = slot.options.num_ctx if slot.options else model.context_length
        remaining = slot.expiry(now) - now
        expires = wall + (_FOREVER_NS if math.isinf(remaining) else int(max(remaining, 0) * _NS))
        size = _runner_size(model, num_ctx)
        rows.append(
            (
                remaining,
                {
                    "name": model.name,
                    "model": model.name,
                    "size": size,
                    "digest": model.digest,
                    "details": model.details(),
                    "expires_at": rfc3339_utc(expires),
                    "size_vram": size,
                    "context_length": num_ctx,
                },
            )
        )
    rows.sort(key=lambda row: row[0], reverse=True)
    return [row for _, row in rows]


def tags_model(model: ModelInfo) -> dict[str, Any]:
    return {
        "name": model.name,
        "model": model.name,
        "modified_at": local_time(model.modified_at),
        "size": model.size,
        "digest": model.digest,
        "details": model.details(),
    }


def show_model(model: ModelInfo) -> dict[str, Any]:
    family = model.family
    return {
        "license": "",
        "modelfile": f"# Modelfile generated by the foreman stub\nFROM {model.name}\n",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": model.details(),
        "model_info": {
            "general.architecture": family,
            "general.basename": model.name.split(":", 1)[0],
            "general.parameter_count": _parameter_count(model.parameter_size),
            f"{family}.context_length": model.context_length,
            f"{family}.embedding_length": model.embedding_length,
        },
        "capabilities": model.capabilities,
        "modified_at": local_time(model.modified_at),
    }


def _parameter_count(size: str) -> int:
    scale = {"B": 1_000_000_000, "M": 1_000_000}.get(size[-1:], 1)
    try:
        return int(float(size[:-1]) * scale)
    except ValueError:
        return 0
