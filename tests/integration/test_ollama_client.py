"""Acceptance: the official `ollama` Python client works against foreman unchanged."""

from __future__ import annotations

import ollama
import pytest

from foreman.stub import StubOllama


async def test_official_client_chat_stream_generate_embed_list_ps(
    foreman: str, stub: StubOllama
) -> None:
    async with ollama.AsyncClient(host=foreman) as client:
        messages = [{"role": "user", "content": "title this memo"}]

        reply = await client.chat(model="llama3", messages=messages)
        expected = stub.expected_text("/api/chat", {"model": "llama3", "messages": messages})
        assert reply.message.content == expected
        assert reply.done

        pieces = [
            part.message.content
            async for part in await client.chat(model="llama3", messages=messages, stream=True)
        ]
        assert "".join(pieces) == expected

        generated = await client.generate(model="mistral", prompt="tag this note")
        assert generated.response == stub.expected_text(
            "/api/generate", {"model": "mistral", "prompt": "tag this note"}
        )

        embedded = await client.embed(model="nomic-embed-text", input=["a", "b"])
        assert len(embedded.embeddings) == 2

        listed = await client.list()
        assert "llama3:latest" in {m.model for m in listed.models}

        running = await client.ps()
        assert "mistral:latest" in {m.model for m in running.models}


async def test_official_client_raises_ollamas_error_for_an_unknown_model(foreman: str) -> None:
    async with ollama.AsyncClient(host=foreman) as client:
        with pytest.raises(ollama.ResponseError) as info:
            await client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 404
        assert "not found" in info.value.error
        with pytest.raises(ollama.ResponseError) as streamed:
            async for _ in await client.generate(model="no-such-model", prompt="x", stream=True):
                pass
        assert streamed.value.status_code == 404
