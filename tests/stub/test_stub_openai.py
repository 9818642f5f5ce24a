"""The /v1 routes: OpenAI shapes, SSE streams, shared runner and text with /api."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import pytest

from foreman.stub import StubOllama, expected_embedding, expected_text

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
CHAT = {"model": "llama3", "messages": MESSAGES}


def sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(event.startswith("data: ") for event in events)
    return [event[len("data: ") :] for event in events]


async def test_chat_completion_matches_the_native_chat(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    answer = await client.post("/v1/chat/completions", json=CHAT)
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    body = answer.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["system_fingerprint"] == "fp_ollama"
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "stop"
    native = (await client.post("/api/chat", json={**CHAT, "stream": False})).json()
    assert choice["message"] == {"role": "assistant", "content": native["message"]["content"]}
    assert choice["message"]["content"] == expected_text("/v1/chat/completions", CHAT)
    usage = body["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    assert [entry.kind for entry in stub.requests] == ["v1-chat", "chat"]
    assert stub.loads == {"llama3:latest": 1}  # one runner shared by both families


async def test_chat_completion_stream(client: httpx.AsyncClient) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks: list[dict[str, Any]] = [json.loads(event) for event in events[:-1]]
    *content, finish, usage = chunks
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in content[1:])
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["created"] for c in chunks}) == 1
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert text == expected_text("/v1/chat/completions", CHAT)
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 8


async def test_max_tokens_gives_length(client: httpx.AsyncClient) -> None:
    body = {**CHAT, "max_tokens": 2}
    choice = (await client.post("/v1/chat/completions", json=body)).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert len(choice["message"]["content"].split()) == 2


async def test_completions(client: httpx.AsyncClient) -> None:
    body = {"model": "qwen2.5:7b", "prompt": "Once upon a time"}
    answer = (await client.post("/v1/completions", json=body)).json()
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == expected_text("/v1/completions", body)
    native = {"model": "qwen2.5:7b", "prompt": "Once upon a time", "stream": False}
    assert (
        answer["choices"][0]["text"]
        == (await client.post("/api/generate", json=native)).json()["response"]
    )
    streamed = await client.post(
        "/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    text = "".join(chunk["choices"][0]["text"] for chunk in chunks[:-1])
    assert text == answer["choices"][0]["text"]


async def test_embeddings(client: httpx.AsyncClient) -> None:
    body = {"model": "nomic-embed-text", "input": ["a", "b"]}
    answer = (await client.post("/v1/embeddings", json=body)).json()
    assert answer["object"] == "list"
    assert answer["model"] == "nomic-embed-text"
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert answer["data"][0]["embedding"] == expected_embedding("nomic-embed-text", "a")
    packed = await client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
    raw = base64.b64decode(packed.json()["data"][1]["embedding"])
    floats = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert floats == pytest.approx(expected_embedding("nomic-embed-text", "b"), abs=1e-6)
    empty = await client.post("/v1/embeddings", json={**body, "input": []})
    assert empty.status_code == 400
    assert empty.json()["error"]["type"] == "invalid_request_error"


async def test_models(client: httpx.AsyncClient) -> None:
    listing = (await client.get("/v1/models")).json()
    assert listing["object"] == "list"
    ids = {item["id"] for item in listing["data"] if item["object"] == "model"}
    assert {"llama3:latest", "nomic-embed-text:latest"} <= ids
    one = (await client.get("/v1/models/llama3")).json()
    assert one["id"] == "llama3"
    assert one["object"] == "model"
    assert one["owned_by"] == "library"
    missing = await client.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "model 'nope' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }


@pytest.mark.parametrize(
    ("body", "status", "kind", "message"),
    [
        ({"model": "llama3", "messages": []}, 400, "invalid_request_error", "[] is too short"),
        ({**CHAT, "model": "nope"}, 404, "not_found_error", "model 'nope' not found"),
        ({**CHAT, "model": "nomic-embed-text"}, 400, "invalid_request_error", "support chat"),
    ],
)
async def test_errors_use_the_openai_shape(
    client: httpx.AsyncClient, body: Any, status: int, kind: str, message: str
) -> None:
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == kind
    assert message in error["message"]
    assert error["param"] is None
    assert error["code"] is None
