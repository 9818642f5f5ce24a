"""Acceptance: client disconnects, the embedding bypass, and streaming as Ollama streams."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.stub import StubConfig, StubOllama

from .conftest import job_rows, wait_for


def chat(model: str, text: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


async def post_chat(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    await client.post("/api/chat", json=body)


async def test_queued_job_whose_client_left_never_reaches_ollama(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings, foreman: str
) -> None:
    stub.hold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(post_chat, client, chat("llama3", "busy"))
        await stub.wait_until(lambda: stub.inflight_inference == 1)
        async with httpx.AsyncClient(base_url=foreman) as impatient:
            with trio.move_on_after(30) as waiting:
                nursery_inner_done = trio.Event()

                async def leave_when_queued() -> None:
                    await wait_for(lambda: len(job_rows(settings.db)) == 2)
                    waiting.cancel()
                    nursery_inner_done.set()

                nursery.start_soon(leave_when_queued)
                await impatient.post("/api/chat", json=chat("mistral", "gone"))
            assert nursery_inner_done.is_set()
        await wait_for(lambda: job_rows(settings.db)[1]["state"] == "cancelled")
        stub.release()
    assert [e.model for e in stub.requests_of("chat")] == ["llama3:latest"]
    assert all(e.model != "mistral:latest" for e in stub.requests)
    gone = job_rows(settings.db)[1]
    assert gone["error"] == "client disconnected"
    assert gone["attempts"] == 0


async def test_client_leaving_a_running_job_closes_the_upstream_request(
    stub: StubOllama, settings: Settings, foreman: str
) -> None:
    stub.hold()
    async with httpx.AsyncClient(base_url=foreman) as leaving:
        with trio.move_on_after(30) as scope:

            async def leave_when_running() -> None:
                await stub.wait_until(lambda: stub.inflight_inference == 1)
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(leave_when_running)
                await leaving.post("/api/chat", json=chat("llama3", "long", stream=True))
    (entry,) = stub.requests_of("chat")
    with trio.fail_after(30):
        await stub.wait_until(lambda: entry.finished)
    assert entry.cancelled
    await wait_for(lambda: job_rows(settings.db)[0]["state"] == "cancelled")
    stub.release()


async def test_embeddings_answer_while_a_long_chat_runs(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    stub.hold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(post_chat, client, chat("llama3", "long"))
        await stub.wait_until(lambda: stub.inflight_inference == 1)
        r = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "a"})
        assert r.status_code == 200
        assert r.json()["embeddings"] == [stub.expected_embedding("nomic-embed-text", "a")]
        legacy = await client.post(
            "/api/embeddings", json={"model": "nomic-embed-text", "prompt": "a"}
        )
        assert legacy.status_code == 200
        assert stub.inflight_inference == 1  # the chat is still generating
        stub.release()


@pytest.mark.parametrize("stub_config", [StubConfig(load_delay=3600)])
async def test_embeddings_answer_while_a_swap_is_loading(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings, nursery: trio.Nursery
) -> None:
    nursery.start_soon(post_chat, client, chat("llama3", "slow load"))
    await wait_for(lambda: any(r["state"] == "loading" for r in job_rows(settings.db)))
    await stub.wait_until(lambda: any(e.kind == "load" for e in stub.requests))
    r = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": ["x", "y"]})
    assert r.status_code == 200
    assert len(r.json()["embeddings"]) == 2
    (load,) = stub.requests_of("load")
    assert not load.finished
    assert not stub.requests_of("embed")[0].cancelled


@pytest.mark.parametrize("stub_config", [StubConfig(tokens=200, token_delay=0.01)])
async def test_stream_is_relayed_line_for_line_while_the_model_generates(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    body = chat("llama3", "stream me", stream=True)
    relayed: list[bytes] = []
    async with client.stream("POST", "/api/chat", json=body) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        assert r.headers["x-foreman-job-id"]
        assert int(r.headers["x-foreman-queue-ms"]) >= 0
        lines = r.aiter_lines()
        relayed.append((await lines.__anext__()).encode())
        stub.hold()  # freeze generation: the first line arrived while the model was busy
        try:
            (entry,) = stub.requests_of("chat")
            assert not entry.finished
        finally:
            stub.release()
        relayed += [line.encode() async for line in lines if line]
    async with (
        httpx.AsyncClient(base_url=stub.url) as direct,
        direct.stream("POST", "/api/chat", json=body) as d,
    ):
        straight = [line.encode() async for line in d.aiter_lines() if line]
    assert len(relayed) == len(straight) == 201
    assert [_stable(x) for x in relayed] == [_stable(x) for x in straight]


def _stable(line: bytes) -> dict[str, Any]:
    """A stream line without the fields that differ between two runs (time, durations)."""
    data = json.loads(line)
    return {k: v for k, v in data.items() if k != "created_at" and not k.endswith("duration")}


async def test_bad_input_is_rejected_in_ollamas_shape_and_never_queued(
    client: httpx.AsyncClient, settings: Settings, stub: StubOllama
) -> None:
    cases: list[tuple[str, bytes, str]] = [
        ("/api/chat", b"", "missing request body"),
        ("/api/chat", b"{not json", "not valid JSON"),
        ("/api/chat", b"[1, 2]", "must be a JSON object"),
        ("/api/chat", b'{"messages": []}', "model is required"),
        ("/api/chat", b'{"model": ""}', "model is required"),
        ("/api/chat", b'{"model": "m", "messages": "hi"}', "messages must be a list of objects"),
        ("/api/chat", b'{"model": "m", "messages": [1]}', "messages must be a list of objects"),
        ("/api/generate", b'{"model": "m", "prompt": 5}', "prompt must be a string"),
        ("/api/generate", b'{"model": "m", "stream": "yes"}', "stream must be true or false"),
        ("/api/generate", b'{"model": "m", "options": []}', "options must be a JSON object"),
        ("/api/generate", b"\xff\xfe", "UTF-8"),
    ]
    for path, raw, message in cases:
        r = await client.post(path, content=raw)
        assert r.status_code == 400, (raw, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert message in r.json()["error"], (raw, r.json())
    assert job_rows(settings.db) == []
    assert stub.requests_of("chat", "generate", "load", "unload") == []


async def test_relayed_routes_are_transparent(client: httpx.AsyncClient, stub: StubOllama) -> None:
    root = await client.get("/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert (await client.head("/")).status_code == 200
    assert (await client.get("/api/version")).json()["version"] == stub.config.version
    tags = (await client.get("/api/tags")).json()
    assert {m["name"] for m in tags["models"]} >= {"llama3:latest", "nomic-embed-text:latest"}
    missing = await client.post("/api/show", json={"model": "nope"})
    assert missing.status_code == 404
    assert missing.json() == {"error": "model 'nope' not found"}
    async with client.stream("POST", "/api/pull", json={"model": "tinyllama"}) as r:
        progress = [json.loads(line) async for line in r.aiter_lines() if line]
    assert progress[-1] == {"status": "success"}
    copy = await client.post("/api/copy", json={"source": "tinyllama", "destination": "t2"})
    assert (copy.status_code, copy.content) == (200, b"")
    deleted = await client.request("DELETE", "/api/delete", json={"model": "t2"})
    assert deleted.status_code == 200
    assert (await client.get("/api/nothing-here")).status_code == 404
    # the stub answers 403 to a foreign Host, as Ollama on loopback does: foreman must
    # send Ollama's own Host, whatever the client sent
    tunnel = await client.get("/api/tags", headers={"Host": "foreman.example.com"})
    assert tunnel.status_code == 200


async def test_ollama_down_is_a_clean_502_on_relayed_routes(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    stub.stop_listening()
    r = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "a"})
    assert r.status_code == 502
    assert "cannot reach ollama" in r.json()["error"]
    await stub.start_listening()
