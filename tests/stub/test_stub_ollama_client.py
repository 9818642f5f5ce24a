"""The official `ollama` Python client against the stub: proof the wire format is right."""

from __future__ import annotations

import ollama
import pytest

from foreman.stub import StubOllama, expected_embedding

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


async def test_chat_and_stream(stub: StubOllama) -> None:
    async with ollama.AsyncClient(host=stub.url) as client:
        expected = stub.expected_text("/api/chat", {"model": "llama3", "messages": MESSAGES})
        answer = await client.chat(model="llama3", messages=MESSAGES)
        assert answer.message.content == expected
        assert answer.done
        assert answer.done_reason == "stop"
        assert answer.eval_count == 8
        parts = [part async for part in await client.chat("llama3", MESSAGES, stream=True)]
        assert "".join(part.message.content or "" for part in parts) == expected
        assert parts[-1].done


async def test_generate_embed_list_ps(stub: StubOllama) -> None:
    async with ollama.AsyncClient(host=stub.url) as client:
        generated = await client.generate(model="qwen2.5:7b", prompt="hello", keep_alive="10m")
        body = {"model": "qwen2.5:7b", "prompt": "hello"}
        assert generated.response == stub.expected_text("/api/generate", body)
        assert generated.context
        embedded = await client.embed(model="nomic-embed-text", input=["one", "two"])
        assert list(embedded.embeddings[1]) == expected_embedding("nomic-embed-text", "two")
        listed = await client.list()
        assert "llama3:latest" in {model.model for model in listed.models}
        running = await client.ps()
        assert [model.model for model in running.models] == [
            "qwen2.5:7b",
            "nomic-embed-text:latest",
        ]
        assert running.models[0].expires_at is not None
        assert stub.requests[0].keep_alive == "10m"


async def test_errors_become_response_errors(stub: StubOllama) -> None:
    async with ollama.AsyncClient(host=stub.url) as client:
        with pytest.raises(ollama.ResponseError) as missing:
            await client.chat(model="nope", messages=MESSAGES)
        assert missing.value.status_code == 404
        assert missing.value.error == "model 'nope' not found"
        stub.add_fault("mid_error", after=2, message="runner crashed")
        with pytest.raises(ollama.ResponseError, match="runner crashed"):
            async for _ in await client.chat("llama3", MESSAGES, stream=True):
                pass
        stub.add_fault("status", status=503)
        with pytest.raises(ollama.ResponseError) as busy:
            await client.generate(model="llama3", prompt="x")
        assert busy.value.status_code == 503
