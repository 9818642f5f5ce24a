"""/api/generate, /api/chat and /api/embed over real sockets: formats, determinism, slots."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import trio

from foreman.stub import StubOllama, expected_embedding, expected_text

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
GENERATE = {"model": "qwen2.5:7b", "prompt": "Tell me a story"}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


async def stream_lines(client: httpx.AsyncClient, path: str, body: Any) -> list[dict[str, Any]]:
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["transfer-encoding"] == "chunked"
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert raw.endswith(b"\n")
    lines = raw.decode().split("\n")[:-1]
    for line in lines:
        assert line == json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False)
    return [json.loads(line) for line in lines]


async def test_chat_streams_ndjson_by_default(client: httpx.AsyncClient) -> None:
    chunks = await stream_lines(client, "/api/chat", CHAT)
    *parts, final = chunks
    assert len(parts) == 8
    for chunk in parts:
        assert set(chunk) == {"model", "created_at", "message", "done"}
        assert chunk["done"] is False
        assert chunk["model"] == "llama3"
        assert chunk["message"]["role"] == "assistant"
        assert RFC3339_UTC.match(chunk["created_at"])
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    for field in METRICS:
        assert isinstance(final[field], int)
        assert final[field] > 0
    assert final["eval_count"] == 8
    text = "".join(chunk["message"]["content"] for chunk in parts)
    assert text == expected_text("/api/chat", CHAT)


async def test_non_streamed_answer_is_the_joined_stream(client: httpx.AsyncClient) -> None:
    for path, body, field in (
        ("/api/chat", CHAT, "message"),
        ("/api/generate", GENERATE, "response"),
    ):
        chunks = await stream_lines(client, path, body)
        joined = "".join(
            c["message"]["content"] if field == "message" else c["response"] for c in chunks
        )
        response = await client.post(path, json={**body, "stream": False})
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert "content-length" in response.headers
        answer = response.json()
        text = answer["message"]["content"] if field == "message" else answer["response"]
        assert text == joined == expected_text(path, body)
        assert answer["done"] is True
        assert answer["done_reason"] == "stop"


async def test_generate_final_chunk_carries_context(client: httpx.AsyncClient) -> None:
    final = (await client.post("/api/generate", json={**GENERATE, "stream": False})).json()
    assert isinstance(final["context"], list)
    assert all(isinstance(i, int) for i in final["context"])
    assert list(final)[:5] == ["model", "created_at", "response", "done", "done_reason"]
    raw = await client.post("/api/generate", json={**GENERATE, "stream": False, "raw": True})
    assert "context" not in raw.json()


async def test_same_request_same_text_and_num_predict_caps(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    first = (await client.post("/api/generate", json={**GENERATE, "stream": False})).json()
    again = (await client.post("/api/generate", json={**GENERATE, "stream": False})).json()
    assert first["response"] == again["response"]
    capped_body = {**GENERATE, "stream": False, "options": {"num_predict": 2}}
    capped = (await client.post("/api/generate", json=capped_body)).json()
    assert capped["done_reason"] == "length"
    assert capped["eval_count"] == 2
    assert capped["response"] == stub.expected_text("/api/generate", capped_body)
    stub.configure(tokens=3)
    short = (await client.post("/api/chat", json={**CHAT, "stream": False})).json()
    assert short["message"]["content"] == stub.expected_text("/api/chat", CHAT)
    assert len(short["message"]["content"].split()) == 3


async def test_load_and_unload_replies_move_the_slot(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    load = await client.post("/api/generate", json={"model": "mistral"})
    assert load.headers["content-type"] == "application/json; charset=utf-8"
    body = load.json()
    assert body["done_reason"] == "load"
    assert body["response"] == ""
    assert body["done"] is True
    assert "total_duration" not in body
    assert stub.chat_model == "mistral:latest"
    assert stub.loads == {"mistral:latest": 1}
    again = await client.post("/api/chat", json={"model": "mistral", "messages": []})
    assert again.json()["message"] == {"role": "assistant", "content": ""}
    assert stub.loads == {"mistral:latest": 1}  # already resident: no second load
    unload = await client.post("/api/chat", json={"model": "mistral", "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload"
    assert stub.chat_model is None
    assert (await client.get("/api/ps")).json() == {"models": []}
    kinds = [entry.kind for entry in stub.requests]
    assert kinds == ["load", "load", "unload", "ps"]
    assert stub.unloads == {"mistral:latest": 1}


async def test_runner_option_change_is_a_load(stub: StubOllama, client: httpx.AsyncClient) -> None:
    await client.post("/api/chat", json={**CHAT, "stream": False})
    await client.post("/api/chat", json={**CHAT, "stream": False, "options": {"temperature": 0}})
    big = {**CHAT, "stream": False, "options": {"num_ctx": 8192}}
    await client.post("/api/chat", json=big)
    assert [entry.loaded for entry in stub.requests] == [True, False, True]
    assert stub.loads == {"llama3:latest": 2}
    ps = (await client.get("/api/ps")).json()["models"]
    assert ps[0]["context_length"] == 8192
    assert stub.requests[2].runner_options is not None
    assert stub.requests[2].runner_options["num_ctx"] == 8192


async def test_load_delay_is_paid_by_the_loading_request(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.configure(load_delay=0.2)
    await client.post("/api/generate", json={**GENERATE, "stream": False})
    await client.post("/api/generate", json={**GENERATE, "stream": False})
    first, second = stub.requests
    assert first.loaded
    assert first.load_seconds >= 0.2
    assert not second.loaded
    assert second.load_seconds == 0
    assert first.end is not None
    assert first.start is not None
    assert first.end - first.start >= 0.2


async def test_expected_load_duration_includes_the_load(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.configure(load_delay=0.1)
    answer = (await client.post("/api/chat", json={**CHAT, "stream": False})).json()
    assert answer["load_duration"] >= 100_000_000
    assert answer["total_duration"] >= answer["load_duration"]


async def test_keep_alive_is_recorded_and_expiry_empties_ps(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    await client.post("/api/chat", json={**CHAT, "stream": False, "keep_alive": "1h"})
    ps = (await client.get("/api/ps")).json()["models"]
    assert [m["name"] for m in ps] == ["llama3:latest"]
    assert RFC3339_UTC.match(ps[0]["expires_at"])
    assert stub.requests[0].keep_alive == "1h"
    await client.post("/api/chat", json={**CHAT, "stream": False, "keep_alive": 0.05})
    with trio.fail_after(5):  # polls: expiry is lazy, so nothing announces it
        while True:
            if not (await client.get("/api/ps")).json()["models"]:
                break
            await trio.sleep(0.02)
    assert stub.slot_events[-1].reason == "expired"


async def test_keep_alive_forever_lies_centuries_ahead(client: httpx.AsyncClient) -> None:
    await client.post("/api/generate", json={"model": "llama3", "keep_alive": -1})
    expires = (await client.get("/api/ps")).json()["models"][0]["expires_at"]
    assert int(expires[:4]) > 2200


@pytest.mark.parametrize(
    ("keep_alive", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("soon", 'time: invalid duration "soon"'),
        (True, "Unsupported type: 'bool'"),
    ],
)
async def test_bad_keep_alive_is_400(
    client: httpx.AsyncClient, keep_alive: object, message: str
) -> None:
    response = await client.post("/api/chat", json={**CHAT, "keep_alive": keep_alive})
    assert response.status_code == 400
    assert response.json() == {"error": message}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/chat", {"model": "nope", "messages": []}, 404, "model 'nope' not found"),
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
        ("/api/generate", {"prompt": "x"}, 404, "model '' not found"),
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/show", {"model": "nope"}, 404, "model 'nope' not found"),
        ("/api/show", {}, 400, "model is required"),
        ("/api/delete", {"model": "nope"}, 404, "model 'nope' not found"),
        (
            "/api/embed",
            {"model": "nope", "input": "x"},
            404,
            'model "nope" not found, try pulling it first',
        ),
        (
            "/api/embeddings",
            {"model": "nope", "prompt": "x"},
            404,
            'model "nope" not found, try pulling it first',
        ),
        (
            "/api/chat",
            {"model": "nomic-embed-text", "messages": [{"role": "user", "content": "x"}]},
            400,
            '"nomic-embed-text" does not support chat',
        ),
        (
            "/api/generate",
            {"model": "all-minilm", "prompt": "x"},
            400,
            '"all-minilm" does not support generate',
        ),
        ("/api/embed", {"model": "nomic-embed-text", "input": 5}, 400, "invalid input type"),
        (
            "/api/generate",
            {"model": "llama3", "prompt": 5},
            400,
            "json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type "
            "string",
        ),
        (
            "/api/generate",
            {"model": "llama3", "prompt": "x", "raw": True, "system": "s"},
            400,
            "raw mode does not support template, system, or context",
        ),
        (
            "/api/chat",
            {**CHAT, "options": {"num_ctx": "big"}},
            500,
            'option "num_ctx" must be of type integer',
        ),
    ],
)
async def test_errors_match_ollama(
    client: httpx.AsyncClient, path: str, body: Any, status: int, message: str
) -> None:
    method = "DELETE" if path == "/api/delete" else "POST"
    response = await client.request(method, path, json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == {"error": message}


async def test_bad_and_missing_bodies_are_400(client: httpx.AsyncClient) -> None:
    empty = await client.post("/api/chat", content=b"")
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
    broken = await client.post("/api/chat", content=b"{not json")
    assert broken.status_code == 400
    assert "invalid character" in broken.json()["error"]
    truncated = await client.post("/api/generate", content=b'{"model": "llama3"')
    assert truncated.json() == {"error": "unexpected EOF"}
    array = await client.post("/api/generate", content=b"[1]")
    assert array.json()["error"].startswith("json: cannot unmarshal array")


async def test_embed_vectors_are_deterministic_and_normalised(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    body = {"model": "nomic-embed-text", "input": ["alpha", "beta"]}
    answer = (await client.post("/api/embed", json=body)).json()
    assert answer["model"] == "nomic-embed-text"
    assert answer["embeddings"] == [
        expected_embedding("nomic-embed-text", "alpha"),
        expected_embedding("nomic-embed-text", "beta"),
    ]
    assert answer["prompt_eval_count"] == 2
    assert answer["total_duration"] > 0
    single = (await client.post("/api/embed", json={**body, "input": "alpha"})).json()
    assert single["embeddings"] == answer["embeddings"][:1]
    legacy = (
        await client.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": "alpha"})
    ).json()
    assert legacy == {"embedding": answer["embeddings"][0]}
    cut = (await client.post("/api/embed", json={**body, "dimensions": 3})).json()
    assert len(cut["embeddings"][0]) == 3
    assert stub.embed_model == "nomic-embed-text:latest"
    assert stub.chat_model is None


async def test_empty_embed_input_only_loads(stub: StubOllama, client: httpx.AsyncClient) -> None:
    answer = await client.post("/api/embed", json={"model": "all-minilm", "input": []})
    assert answer.json() == {"model": "all-minilm", "embeddings": []}
    assert stub.embed_model == "all-minilm:latest"
    assert stub.requests[0].kind == "load"
    legacy = await client.post("/api/embeddings", json={"model": "all-minilm"})
    assert legacy.json() == {"embedding": []}


async def test_embedding_with_a_chat_model_is_allowed_and_uses_the_embedding_slot(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    answer = await client.post("/api/embed", json={"model": "llama3", "input": "x"})
    assert answer.status_code == 200
    assert answer.json()["embeddings"] == [expected_embedding("llama3", "x")]
    assert stub.embed_model == "llama3:latest"
    assert stub.chat_model is None
