"""What a job's answer looks like once it is stored, the error shapes of each route
family, and how to tell special requests.

Pure. A streamed answer is stored the way Ollama would have answered it unstreamed: the
final chunk with the generated text (and thinking, and tool calls) put back together, so
a result reads the same however the job was asked for. Native streams are NDJSON lines
(`StreamResult`); the /v1 routes stream Server-Sent Events (`EventStreamResult`).
"""

from __future__ import annotations

import enum
import json
from typing import Any

import attrs

from foreman.durations import go_duration_seconds
from foreman.jobs import Endpoint


class StreamError(Exception):
    """An `{"error": ...}` line inside a stream: Ollama failed after it began answering."""


def openai_error_document(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object, typed by status as Ollama's /v1 middleware types it (413,
    which only foreman sends, counts as a bad request)."""
    kind = {400: "invalid_request_error", 413: "invalid_request_error"}.get(status)
    if kind is None:
        kind = "not_found_error" if status == 404 else "api_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Family(enum.Enum):
    """A route family: the shape of every error foreman itself writes on its routes.

    The one place that decides it; HTTP error responses, failed jobs and in-band stream
    errors all ask here. Errors that come from Ollama are relayed as they are.
    """

    OLLAMA = "ollama"
    OPENAI = "openai"

    @classmethod
    def of(cls, path: str) -> Family:
        """The family of a request path (an `Endpoint` is a path too)."""
        return cls.OPENAI if path.startswith("/v1/") else cls.OLLAMA

    def error_body(self, status: int, message: str) -> bytes:
        """A JSON error body: `{"error": "..."}` or OpenAI's error object."""
        if self is Family.OPENAI:
            return json.dumps(openai_error_document(status, message)).encode()
        return json.dumps({"error": message}).encode()

    def stream_error(self, message: str) -> bytes:
        """The in-band error that ends a stream already under way: an NDJSON line as
        Ollama sends, or an SSE event carrying OpenAI's error object (and no [DONE])."""
        if self is Family.OPENAI:
            return b"data: " + json.dumps(openai_error_document(500, message)).encode() + b"\n\n"
        return json.dumps({"error": message}).encode() + b"\n"


@attrs.define
class StreamResult:
    endpoint: Endpoint
    text: list[str] = attrs.field(factory=list)
    thinking: list[str] = attrs.field(factory=list)
    tool_calls: list[Any] = attrs.field(factory=list)
    final: dict[str, Any] | None = None
    lines: int = 0

    def add(self, line: bytes) -> None:
        """Take in one NDJSON line; raises StreamError on Ollama's in-band error line."""
        if not line.strip():
            return
        try:
            chunk = json.loads(line)
        except ValueError:
            raise StreamError(f"ollama sent a line that is not JSON: {line[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise StreamError("ollama sent a stream line that is not a JSON object")
        if "error" in chunk:
            raise StreamError(str(chunk["error"]))
        self.lines += 1
        if self.endpoint is Endpoint.CHAT:
            message = chunk.get("message")
            if isinstance(message, dict):
                self._collect(message.get("content"), message.get("thinking"))
                calls = message.get("tool_calls")
                if isinstance(calls, list):
                    self.tool_calls.extend(calls)
        else:
            self._collect(chunk.get("response"), chunk.get("thinking"))
        if chunk.get("done") is True:
            self.final = chunk

    def _collect(self, text: Any, thinking: Any) -> None:
        if isinstance(text, str):
            self.text.append(text)
        if isinstance(thinking, str):
            self.thinking.append(thinking)

    @property
    def done(self) -> bool:
        return self.final is not None

    def result(self) -> dict[str, Any]:
        """The final chunk carrying the whole text, like a non-streamed answer."""
        final = dict(self.final or {})
        text = "".join(self.text)
        thinking = "".join(self.thinking)
        if self.endpoint is Endpoint.CHAT:
            message = dict(final.get("message") or {"role": "assistant"})
            message["content"] = text
            if thinking:
                message["thinking"] = thinking
            if self.tool_calls:
                message["tool_calls"] = self.tool_calls
            final["message"] = message
        else:
            final["response"] = text
            if thinking:
                final["thinking"] = thinking
        return final


def event_data(event: bytes) -> str | None:
    """The data of one SSE event (its `data:` lines joined by newlines), or None for an
    event without data, such as a comment."""
    data = [
        line[5:].removeprefix(" ")
        for line in event.decode("utf-8", "replace").splitlines()
        if line.startswith("data:")
    ]
    return "\n".join(data) if data else None


@attrs.define
class _Choice:
    role: str | None = None
    text: list[str] = attrs.field(factory=list)
    reasoning: list[str] = attrs.field(factory=list)
    tool_calls: dict[int, dict[str, Any]] = attrs.field(factory=dict)
    finish_reason: Any = None


@attrs.define
class EventStreamResult:
    """Takes in a /v1 stream event by event (each with its blank line) and puts the
    answer back together as the non-streamed `chat.completion` or `text_completion`.

    The stream is complete only once `data: [DONE]` arrived: when Ollama fails part-way
    through a /v1 stream it just stops, with neither a finish chunk nor [DONE].
    """

    endpoint: Endpoint
    choices: dict[int, _Choice] = attrs.field(factory=dict)
    last: dict[str, Any] | None = None
    usage: Any = None
    finished: bool = False
    events: int = 0

    def add(self, event: bytes) -> None:
        """Take in one event; raises StreamError on an error event or one that is not a
        JSON object."""
        data = event_data(event)
        if data is None:
            return
        if data.strip() == "[DONE]":
            self.finished = True
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise StreamError(f"ollama sent an event that is not JSON: {data[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise StreamError("ollama sent a stream event that is not a JSON object")
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise StreamError(str(message))
        self.events += 1
        self.last = chunk
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if isinstance(choice, dict):
                self._collect(choice)

    def _collect(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        into = self.choices.setdefault(index if isinstance(index, int) else 0, _Choice())
        if choice.get("finish_reason") is not None:
            into.finish_reason = choice["finish_reason"]
        if self.endpoint is not Endpoint.V1_CHAT:
            if isinstance(choice.get("text"), str):
                into.text.append(choice["text"])
            return
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        if isinstance(delta.get("role"), str):
            into.role = delta["role"]
        if isinstance(delta.get("content"), str):
            into.text.append(delta["content"])
        if isinstance(delta.get("reasoning"), str):
            into.reasoning.append(delta["reasoning"])
        calls = delta.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(call, dict):
                _merge_tool_call(into.tool_calls, call, position)

    @property
    def done(self) -> bool:
        return self.finished

    def result(self) -> dict[str, Any]:
        """The last chunk's fields with the whole answer, like a non-streamed reply."""
        final = dict(self.last or {})
        chat = self.endpoint is Endpoint.V1_CHAT
        final["object"] = "chat.completion" if chat else "text_completion"
        choices = []
        for index, choice in sorted(self.choices.items()):
            text = "".join(choice.text)
            if chat:
                message: dict[str, Any] = {"role": choice.role or "assistant", "content": text}
                if choice.reasoning:
                    message["reasoning"] = "".join(choice.reasoning)
                if choice.tool_calls:
                    message["tool_calls"] = [c for _, c in sorted(choice.tool_calls.items())]
                choices.append(
                    {"index": index, "message": message, "finish_reason": choice.finish_reason}
                )
            else:
                choices.append(
                    {"text": text, "index": index, "finish_reason": choice.finish_reason}
                )
        final["choices"] = choices
        if self.usage is not None:
            final["usage"] = self.usage
        return final


def _merge_tool_call(
    calls: dict[int, dict[str, Any]], delta: dict[str, Any], position: int
) -> None:
    """OpenAI streams a tool call's arguments in pieces under one index; join them."""
    index = delta.get("index", position)
    key = index if isinstance(index, int) else position
    known = calls.get(key)
    if known is None:
        calls[key] = {**delta, "function": dict(delta.get("function") or {})}
        return
    function = delta.get("function")
    if isinstance(function, dict):
        merged = known["function"]
        for name, value in function.items():
            if name == "arguments" and isinstance(value, str):
                merged["arguments"] = str(merged.get("arguments") or "") + value
            elif value is not None:
                merged[name] = value
    for name, value in delta.items():
        if name not in ("function", "index") and value is not None:
            known[name] = value


def replay_stream(endpoint: Endpoint, result: Any) -> tuple[str, bytes]:
    """A stored result sent again as a stream of one part, framed as `endpoint` streams:
    the final chunk as one NDJSON line, or on /v1 one SSE chunk carrying the whole
    answer, then `data: [DONE]`. Returns the content type and the body."""
    if not endpoint.openai:
        return "application/x-ndjson", json.dumps(result, separators=(",", ":")).encode() + b"\n"
    chunk = dict(result) if isinstance(result, dict) else {}
    choices = chunk.get("choices")
    if endpoint is Endpoint.V1_CHAT:
        chunk["object"] = "chat.completion.chunk"
        chunk["choices"] = [
            {
                "index": choice.get("index", 0),
                "delta": choice.get("message") or {},
                "finish_reason": choice.get("finish_reason"),
            }
            for choice in (choices if isinstance(choices, list) else [])
            if isinstance(choice, dict)
        ]
    event = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    return "text/event-stream", event + b"data: [DONE]\n\n"


def heartbeat_part(endpoint: Endpoint, model: str, created_at: str, stream: bool) -> bytes:
    """What keeps a waiting answer's connection alive, in the answer's own framing.

    A native stream gets a chunk as Ollama sends one (empty content, not done), which
    every client reads as nothing; a /v1 stream an SSE comment, which SSE readers skip;
    a non-streamed answer a space, which JSON allows before the document.
    """
    if not stream:
        return b" "
    if endpoint.openai:
        return b": keep-alive\n\n"
    chunk: dict[str, Any] = {"model": model, "created_at": created_at}
    if endpoint is Endpoint.CHAT:
        chunk["message"] = {"role": "assistant", "content": ""}
    else:
        chunk["response"] = ""
    chunk["done"] = False
    return json.dumps(chunk, separators=(",", ":")).encode() + b"\n"


def decode_body(body: bytes) -> Any:
    """A stored result: the JSON document, or the text when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return {"raw": body.decode("utf-8", "replace")}


def is_unload_request(endpoint: Endpoint, request: dict[str, Any]) -> bool:
    """Nothing to generate and keep_alive 0: Ollama's "unload this model now" command.

    Never on /v1, which does not pass keep_alive on to Ollama."""
    if endpoint.openai:
        return False
    keep_alive = request.get("keep_alive")
    zero = keep_alive == 0 or (isinstance(keep_alive, str) and _zero_duration(keep_alive))
    if not zero or isinstance(keep_alive, bool):
        return False
    if endpoint is Endpoint.CHAT:
        return not request.get("messages")
    return not request.get("prompt")


def _zero_duration(text: str) -> bool:
    """A Go duration string that amounts to zero ("0", "0s", "0h0m")."""
    return go_duration_seconds(text.strip().lstrip("+-")) == 0
