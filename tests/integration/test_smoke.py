from __future__ import annotations

import json

import httpx

from foreman.stub import StubOllama


async def test_chat_non_streamed_is_ollamas_body(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    r = await client.post("/api/chat", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["x-foreman-job-id"]
    data = r.json()
    assert data["message"]["content"] == stub.expected_text("/api/chat", body)
    assert data["done"] is True


async def test_generate_streams_lines(client: httpx.AsyncClient, stub: StubOllama) -> None:
    body = {"model": "llama3", "prompt": "hello"}
    async with client.stream("POST", "/api/generate", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) async for line in r.aiter_lines() if line]
    assert lines[-1]["done"] is True
    assert "".join(x["response"] for x in lines) == stub.expected_text("/api/generate", body)
