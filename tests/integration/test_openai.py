"""Acceptance: Ollama's OpenAI-compatible routes (/v1) through foreman's queue."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from openai.types.chat import ChatCompletionMessageParam

from foreman.config import Settings
from foreman.stub import StubConfig, StubOllama

from .conftest import job_rows, wait_for

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat(model: str, text: str, stream: bool | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream is not None:
        body["stream"] = stream
    return body


def events(raw: bytes) -> list[bytes]:
    """A Server-Sent Events body split into its events, each with its blank line."""
    parts = raw.split(b"\n\n")
    assert parts[-1] == b"", raw[-200:]
    return [part + b"\n\n" for part in parts[:-1]]


def data_of(event: bytes) -> Any:
    assert event.startswith(b"data: "), event
    payload = event[len(b"data: ") :].strip()
    return payload.decode() if payload == b"[DONE]" else json.loads(payload)


def stable(event: bytes) -> Any:
    """An event without the fields that differ between two runs (`id`, `created`)."""
    data = data_of(event)
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if k not in ("id", "created")}
    return data


def v1_error(response: httpx.Response, status: int, kind: str) -> str:
    """Assert OpenAI's error shape; return the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (kind, None, None)
    assert isinstance(error["message"], str)
    return str(error["message"])


async def test_official_openai_client_works_unchanged(foreman: str, stub: StubOllama) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "title this memo"}]
    expected = stub.expected_text(CHAT, {"model": "llama3", "messages": messages})
    async with openai.AsyncOpenAI(base_url=f"{foreman}/v1", api_key="anything") as client:
        reply = await client.chat.completions.create(model="llama3", messages=messages)
        assert reply.object == "chat.completion"
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason == "stop"

        pieces = [
            chunk.choices[0].delta.content or ""
            async for chunk in await client.chat.completions.create(
                model="llama3",
                messages=messages,
                stream=True,
            )
            if chunk.choices
        ]
        assert "".join(pieces) == expected

        completion = await client.completions.create(model="mistral", prompt="tag this note")
        assert completion.choices[0].text == stub.expected_text(
            COMPLETIONS, {"model": "mistral", "prompt": "tag this note"}
        )

        embedded = await client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
        # the client asks for base64 float32 vectors, so compare at float32 precision
        assert [e.embedding for e in embedded.data] == [
            pytest.approx(stub.expected_embedding("nomic-embed-text", text), rel=1e-6)
            for text in ("a", "b")
        ]

        listed = [model.id async for model in client.models.list()]
        assert {"llama3:latest", "nomic-embed-text:latest"} <= set(listed)
        assert (await client.models.retrieve("llama3")).id == "llama3"

        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="no-such-model", messages=messages)
        assert missing.value.status_code == 404
        assert "not found" in missing.value.message
    # the embedding never touched the queue; the three inference requests did
    assert len(stub.requests_of("v1-embeddings")) == 1
    assert stub.max_inflight_inference == 1


async def test_non_streamed_answer_is_ollamas_body_with_foreman_headers(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    body = chat("llama3", "hello")  # no `stream`: /v1 answers in one piece by default
    r = await client.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-foreman-job-id"]
    assert int(r.headers["x-foreman-queue-ms"]) >= 0
    answer = r.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == stub.expected_text(CHAT, body)
    (entry,) = stub.requests_of("v1-chat")
    assert entry.body == body  # relayed to Ollama's own /v1 route, byte for byte
    assert entry.stream is False
    (row,) = job_rows(settings.db)
    assert row["id"] == r.headers["x-foreman-job-id"]
    assert (row["endpoint"], row["state"]) == (CHAT, "done")
    assert json.loads(row["result"]) == answer


async def test_mixed_v1_and_api_burst_drains_by_model_one_at_a_time(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    """llama3 runs on /v1; a burst over /v1 and /api for mistral and llama3 (spelled both
    ways) runs every llama3 job before the one swap to mistral."""

    async def post(path: str, body: dict[str, Any]) -> None:
        r = await client.post(path, json=body)
        assert r.status_code == 200, r.text

    arrivals: list[tuple[str, dict[str, Any]]] = [
        (CHAT, chat("mistral", "m0")),
        ("/api/chat", {**chat("llama3:latest", "l1"), "stream": False}),
        (COMPLETIONS, {"model": "mistral", "prompt": "m2"}),
        ("/api/generate", {"model": "mistral:latest", "prompt": "m3", "stream": False}),
        (COMPLETIONS, {"model": "llama3", "prompt": "l4"}),
        (CHAT, chat("LLaMA3", "l5", stream=True)),
    ]
    stub.hold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(post, CHAT, chat("llama3", "first"))
        await stub.wait_until(lambda: stub.inflight_inference == 1)
        for i, (path, body) in enumerate(arrivals):
            nursery.start_soon(post, path, body)
            await wait_for(_queued_count_is(settings.db, i + 1))
        stub.release()
    ran = stub.requests_of("chat", "generate", "v1-chat", "v1-completions")
    assert [(e.model, e.path) for e in ran] == [
        ("llama3:latest", CHAT),
        ("llama3:latest", "/api/chat"),
        ("llama3:latest", COMPLETIONS),
        ("llama3:latest", CHAT),
        ("mistral:latest", CHAT),
        ("mistral:latest", COMPLETIONS),
        ("mistral:latest", "/api/generate"),
    ]
    assert stub.max_inflight_inference == 1
    # foreman's explicit loads pin each model, on the native route the /v1 job runs by
    residency = [e for e in stub.requests if e.kind in ("load", "unload")]
    assert [(e.kind, e.model, e.path) for e in residency] == [
        ("load", "llama3:latest", "/api/chat"),
        ("unload", "llama3:latest", "/api/chat"),
        ("load", "mistral:latest", "/api/chat"),
    ]
    assert [e.keep_alive for e in residency] == [settings.keep_alive, 0, settings.keep_alive]
    assert {row["state"] for row in job_rows(settings.db)} == {"done"}


def _queued(db: Path) -> int:
    return sum(1 for row in job_rows(db) if row["state"] == "queued")


def _queued_count_is(db: Path, count: int) -> Callable[[], bool]:
    return lambda: _queued(db) == count


@pytest.mark.parametrize("stub_config", [StubConfig(tokens=200, token_delay=0.01)])
async def test_sse_stream_is_relayed_event_for_event_while_the_model_generates(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    body = chat("llama3", "stream me", stream=True)
    async with client.stream("POST", CHAT, json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-foreman-job-id"]
        raw = r.aiter_raw()
        received = await raw.__anext__()
        stub.hold()  # freeze generation: the first event arrived while the model was busy
        (entry,) = stub.requests_of("v1-chat")
        assert not entry.finished
        stub.release()
        received += b"".join([part async for part in raw])
    async with (
        httpx.AsyncClient(base_url=stub.url) as direct,
        direct.stream("POST", CHAT, json=body) as d,
    ):
        straight = b"".join([part async for part in d.aiter_raw()])
    relayed, expected = events(received), events(straight)
    assert len(relayed) == len(expected) == 200 + 2  # tokens, the finish chunk, [DONE]
    assert [stable(e) for e in relayed] == [stable(e) for e in expected]
    assert relayed[-1] == b"data: [DONE]\n\n"
    # the stored result is the answer put back together, as if it had not streamed
    (row,) = job_rows(settings.db)
    result = json.loads(row["result"])
    assert result["object"] == "chat.completion"
    assert result["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": stub.expected_text(CHAT, body)},
            "finish_reason": "stop",
        }
    ]


@pytest.mark.parametrize("stub_config", [StubConfig(tokens=200, token_delay=0.01)])
async def test_client_leaving_mid_sse_stream_closes_the_upstream_request(
    stub: StubOllama, settings: Settings, foreman: str
) -> None:
    body = {"model": "llama3", "prompt": "x", "stream": True}
    async with (
        httpx.AsyncClient(base_url=foreman) as leaving,
        leaving.stream("POST", COMPLETIONS, json=body) as r,
    ):
        assert r.status_code == 200
        first = await r.aiter_raw().__anext__()
        assert first.startswith(b"data: ")
        stub.hold()  # the model is mid-answer when the client goes
    (entry,) = stub.requests_of("v1-completions")
    with trio.fail_after(30):
        await stub.wait_until(lambda: entry.finished)
    assert entry.cancelled
    await wait_for(lambda: job_rows(settings.db)[0]["state"] == "cancelled")
    assert job_rows(settings.db)[0]["error"] == "client disconnected"
    stub.release()


async def test_sse_stream_cut_after_bytes_ends_with_an_openai_error_event_and_no_retry(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings, foreman: str
) -> None:
    stub.add_fault("cut", after=3, count=1, request_kind="v1-chat")
    async with client.stream("POST", CHAT, json=chat("llama3", "cut", stream=True)) as r:
        assert r.status_code == 200
        received = events(b"".join([part async for part in r.aiter_raw()]))
    assert len(received) == 4
    assert all("choices" in data_of(e) for e in received[:3])
    error = data_of(received[3])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "api_error"
    assert b"[DONE]" not in b"".join(received)
    assert len(stub.requests_of("v1-chat")) == 1
    (row,) = job_rows(settings.db)
    assert (row["state"], row["attempts"]) == ("failed", 1)

    # the official client raises on the error event instead of ending quietly
    stub.add_fault("cut", after=2, count=1, request_kind="v1-chat")
    async with openai.AsyncOpenAI(base_url=f"{foreman}/v1", api_key="x") as sdk:
        stream = await sdk.chat.completions.create(
            model="llama3",
            messages=[{"role": "user", "content": "cut again"}],
            stream=True,
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass


async def test_sse_stream_cut_before_any_byte_is_retried_transparently(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.add_fault("cut", after=0, count=1, request_kind="v1-completions")
    body = {"model": "llama3", "prompt": "cut early", "stream": True}
    async with client.stream("POST", COMPLETIONS, json=body) as r:
        assert r.status_code == 200
        received = events(b"".join([part async for part in r.aiter_raw()]))
    assert received[-1] == b"data: [DONE]\n\n"
    text = "".join(data_of(e)["choices"][0]["text"] for e in received[:-1])
    assert text == stub.expected_text(COMPLETIONS, body)
    assert [e.fault for e in stub.requests_of("v1-completions")] == ["cut", None]
    (row,) = job_rows(settings.db)
    assert (row["state"], row["attempts"]) == ("done", 2)
    assert json.loads(row["result"])["choices"][0]["text"] == text


async def test_bad_input_on_every_v1_route_is_a_400_in_openais_shape_and_never_queued(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    cases: list[tuple[str, bytes, str]] = [
        (CHAT, b"", "missing request body"),
        (CHAT, b"{not json", "not valid JSON"),
        (CHAT, b"[1, 2]", "must be a JSON object"),
        (CHAT, b'{"messages": []}', "model is required"),
        (CHAT, b'{"model": "", "messages": []}', "model is required"),
        (CHAT, b'{"model": 3, "messages": []}', "model is required"),
        (CHAT, b'{"model": "m"}', "messages must be a list of objects"),
        (CHAT, b'{"model": "m", "messages": "hi"}', "messages must be a list of objects"),
        (CHAT, b'{"model": "m", "messages": [1]}', "messages must be a list of objects"),
        (CHAT, b'{"model": "m", "messages": [], "stream": "yes"}', "stream must be"),
        (COMPLETIONS, b"\xff\xfe", "UTF-8"),
        (COMPLETIONS, b'{"prompt": "x"}', "model is required"),
        (COMPLETIONS, b'{"model": "m", "prompt": ["a", "b"]}', "prompt must be a string"),
        (COMPLETIONS, b'{"model": "m", "prompt": 5}', "prompt must be a string"),
        (COMPLETIONS, b'{"model": "m", "prompt": "x", "stream": 1}', "stream must be"),
        # relayed routes: Ollama judges, and its /v1 answer reaches the client unchanged
        ("/v1/embeddings", b'{"model": "nomic-embed-text", "input": []}', "invalid input"),
        ("/v1/embeddings", b"{not json", ""),
    ]
    for path, raw, message in cases:
        r = await client.post(path, content=raw)
        assert message in v1_error(r, 400, "invalid_request_error"), (path, raw, r.json())
    assert job_rows(settings.db) == []
    assert stub.requests_of("v1-chat", "v1-completions", "load", "unload") == []
    # routing errors on /v1 are OpenAI-shaped too
    v1_error(await client.get(CHAT), 405, "api_error")
    v1_error(await client.post("/v1/nothing-here", json={}), 404, "not_found_error")
    # ... while a native unknown route stays Ollama's plain-text 404
    native = await client.get("/api/nothing-here")
    assert (native.status_code, native.text) == (404, "404 page not found")


async def test_unknown_model_on_v1_fails_at_once_with_a_404_in_openais_shape(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    r = await client.post(COMPLETIONS, json={"model": "no-such-model", "prompt": "x"})
    assert "not found" in v1_error(r, 404, "not_found_error")
    assert r.headers["x-foreman-job-id"]
    tried = [e for e in stub.requests if e.model == "no-such-model:latest"]
    assert [(e.kind, e.path) for e in tried] == [("load", "/api/generate")]
    (row,) = job_rows(settings.db)
    assert (row["state"], row["attempts"]) == ("failed", 1)


async def test_v1_job_failing_every_attempt_without_an_answer_is_a_502_in_openais_shape(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.add_fault("reset", count=None, request_kind="v1-chat")
    r = await client.post(CHAT, json=chat("llama3", "never"))
    v1_error(r, 502, "api_error")
    assert r.headers["x-foreman-job-id"]
    assert len(stub.requests_of("v1-chat")) == settings.max_attempts
    (row,) = job_rows(settings.db)
    assert (row["state"], row["attempts"]) == ("failed", settings.max_attempts)


async def test_ollama_errors_on_v1_reach_the_client_unchanged(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    stub.add_fault("status", status=400, count=1, request_kind="v1-chat", message="bad tool")
    r = await client.post(CHAT, json=chat("llama3", "x"))
    assert v1_error(r, 400, "invalid_request_error") == "bad tool"
    missing = await client.get("/v1/models/no-such-model")
    assert "not found" in v1_error(missing, 404, "not_found_error")


async def test_ollama_down_is_a_502_in_openais_shape_on_relayed_v1_routes(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    stub.stop_listening()
    r = await client.post("/v1/embeddings", json={"model": "nomic-embed-text", "input": "a"})
    assert "cannot reach ollama" in v1_error(r, 502, "api_error")
    v1_error(await client.get("/v1/models"), 502, "api_error")
    await stub.start_listening()


async def test_repeated_idempotency_key_replays_a_v1_stream_as_server_sent_events(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    body = chat("llama3", "once", stream=True)
    headers = {"Idempotency-Key": "v1-replay"}
    first = await client.post(CHAT, json=body, headers=headers)
    again = await client.post(CHAT, json=body, headers=headers)
    assert again.headers["x-foreman-job-id"] == first.headers["x-foreman-job-id"]
    assert again.headers["content-type"].startswith("text/event-stream")
    chunk, done = events(again.content)
    assert done == b"data: [DONE]\n\n"
    replayed = data_of(chunk)
    assert replayed["object"] == "chat.completion.chunk"
    assert replayed["choices"][0]["delta"]["content"] == stub.expected_text(CHAT, body)
    assert len(stub.requests_of("v1-chat")) == 1
