"""What a job's answer looks like once it is stored, and how to tell special requests.

Pure. A streamed answer is stored the way Ollama would have answered it unstreamed: the
final `done` chunk with the generated text (and thinking, and tool calls) put back
together, so a result reads the same however the job was asked for.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from foreman.jobs import Endpoint


class StreamError(Exception):
    """An `{"error": ...}` line inside a stream: Ollama failed after it began answering."""


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


def decode_body(body: bytes) -> Any:
    """A stored result: the JSON document, or the text when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return {"raw": body.decode("utf-8", "replace")}


def is_unload_request(endpoint: Endpoint, request: dict[str, Any]) -> bool:
    """Nothing to generate and keep_alive 0: Ollama's "unload this model now" command."""
    keep_alive = request.get("keep_alive")
    zero = keep_alive == 0 or (isinstance(keep_alive, str) and _zero_duration(keep_alive))
    if not zero or isinstance(keep_alive, bool):
        return False
    if endpoint is Endpoint.CHAT:
        return not request.get("messages")
    return not request.get("prompt")


def _zero_duration(text: str) -> bool:
    digits = text.strip().rstrip("nsuµmh")
    try:
        return float(digits or "x") == 0
    except ValueError:
        return False
