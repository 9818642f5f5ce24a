"""HTTP behaviour and the non-inference endpoints: Host check, 404/405, HEAD, model management."""

from __future__ import annotations

import hashlib
import json

import httpx
import trio

from foreman.stub import StubConfig, StubOllama, running_stub


async def test_root_and_head(client: httpx.AsyncClient) -> None:
    root = await client.get("/")
    assert root.text == "Ollama is running"
    assert root.headers["content-type"] == "text/plain; charset=utf-8"
    head = await client.head("/")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == "17"
    version = await client.get("/api/version")
    assert version.json() == {"version": "0.33.0-stub"}
    assert (await client.head("/api/version")).status_code == 200


async def test_unknown_paths_and_wrong_methods(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/nothing")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    wrong = await client.get("/api/chat")
    assert wrong.status_code == 405
    assert (await client.post("/api/tags")).status_code == 405
    assert (await client.get("/api/delete")).status_code == 405


async def test_foreign_host_header_is_forbidden(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    denied = await client.get("/api/tags", headers={"Host": "foreman.example.com"})
    assert (denied.status_code, denied.content) == (403, b"")
    allowed = await client.get("/api/tags", headers={"Host": "localhost:11434"})
    assert allowed.status_code == 200
    assert stub.requests[0].status == 403
    stub.configure(check_host=False)
    relaxed = await client.get("/api/tags", headers={"Host": "foreman.example.com"})
    assert relaxed.status_code == 200


async def test_tags_lists_the_catalogue(client: httpx.AsyncClient) -> None:
    models = (await client.get("/api/tags")).json()["models"]
    names = {model["name"] for model in models}
    assert {"llama3:latest", "qwen2.5:7b", "nomic-embed-text:latest"} <= names
    llama = next(model for model in models if model["name"] == "llama3:latest")
    assert set(llama) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert len(llama["digest"]) == 64
    assert llama["details"]["format"] == "gguf"


async def test_ps_shows_both_slots(client: httpx.AsyncClient) -> None:
    await client.post("/api/chat", json={"model": "phi3", "keep_alive": "10m"})
    await client.post("/api/embed", json={"model": "all-minilm", "input": "x", "keep_alive": "1m"})
    models = (await client.get("/api/ps")).json()["models"]
    assert [model["name"] for model in models] == ["phi3:latest", "all-minilm:latest"]
    for model in models:
        assert set(model) == {
            "name",
            "model",
            "size",
            "digest",
            "details",
            "expires_at",
            "size_vram",
            "context_length",
        }
        assert model["size_vram"] == model["size"] > 0


async def test_show_pull_copy_delete(stub: StubOllama, client: httpx.AsyncClient) -> None:
    shown = (await client.post("/api/show", json={"model": "llama3"})).json()
    assert shown["capabilities"] == ["completion", "tools"]
    assert shown["model_info"]["llama.context_length"] == 8192
    async with client.stream("POST", "/api/pull", json={"model": "tinyllama"}) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        steps = [json.loads(line) async for line in response.aiter_lines()]
    assert steps[0] == {"status": "pulling manifest"}
    assert steps[-1] == {"status": "success"}
    assert any("completed" in step for step in steps)
    quiet = await client.post("/api/pull", json={"model": "bge-m3", "stream": False})
    assert quiet.json() == {"status": "success"}
    shown = (await client.post("/api/show", json={"model": "bge-m3"})).json()
    assert shown["capabilities"] == ["embedding"]
    answer = await client.post("/api/generate", json={"model": "tinyllama", "prompt": "x"})
    assert answer.status_code == 200
    copied = await client.post("/api/copy", json={"source": "tinyllama", "destination": "mine"})
    assert (copied.status_code, copied.content) == (200, b"")
    missing = await client.post("/api/copy", json={"source": "nope", "destination": "x"})
    assert missing.json() == {"error": 'model "nope" not found'}
    deleted = await client.request("DELETE", "/api/delete", json={"model": "mine"})
    assert (deleted.status_code, deleted.content) == (200, b"")
    gone = await client.post("/api/show", json={"model": "mine"})
    assert gone.status_code == 404
    created = await client.post("/api/create", json={"model": "x2", "from": "llama3"})
    assert created.text.strip().endswith('{"status":"success"}')
    assert stub.state.catalogue.get("x2") is not None


async def test_deleting_a_resident_model_unloads_it(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    await client.post("/api/generate", json={"model": "gemma2:2b"})
    assert stub.chat_model == "gemma2:2b"
    await client.request("DELETE", "/api/delete", json={"model": "gemma2:2b"})
    assert stub.chat_model is None
    assert stub.slot_events[-1].reason == "deleted"


async def test_blobs(client: httpx.AsyncClient) -> None:
    data = b"weights"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert (await client.head(f"/api/blobs/{digest}")).status_code == 404
    assert (await client.post(f"/api/blobs/{digest}", content=data)).status_code == 201
    assert (await client.head(f"/api/blobs/{digest}")).status_code == 200
    assert (await client.post(f"/api/blobs/{digest}", content=b"other")).status_code == 400


async def test_custom_catalogue_and_names(nursery: trio.Nursery) -> None:
    config = StubConfig(chat_models=("alpha", "Beta:7b"), embed_models=("vec",))
    stub = StubOllama(config)
    await nursery.start(stub.serve)
    async with httpx.AsyncClient(base_url=stub.url) as client:
        names = [m["name"] for m in (await client.get("/api/tags")).json()["models"]]
        assert sorted(names) == ["alpha:latest", "beta:7b", "vec:latest"]
        ok = await client.post("/api/generate", json={"model": "BETA:7B", "prompt": "x"})
        assert ok.status_code == 200
        assert (await client.post("/api/embed", json={"model": "vec", "input": "x"})).is_success
        no = await client.post("/api/generate", json={"model": "llama3", "prompt": "x"})
        assert no.status_code == 404


async def test_running_stub_context_manager() -> None:
    async with running_stub(StubConfig(tokens=2)) as stub:
        async with httpx.AsyncClient(base_url=stub.url) as client:
            body = {"model": "llama3", "prompt": "x", "stream": False}
            answer = (await client.post("/api/generate", json=body)).json()
        assert answer["response"] == stub.expected_text("/api/generate", body)
    assert not stub.listening


async def test_connections_are_counted(stub: StubOllama) -> None:
    async with (
        httpx.AsyncClient(base_url=stub.url) as first,
        httpx.AsyncClient(base_url=stub.url) as second,
    ):
        await first.get("/")
        await second.get("/")
        assert stub.open_connections == 2
    with trio.fail_after(5):
        await stub.wait_until(lambda: stub.open_connections == 0)


async def test_raw_http_keep_alive_and_chunking(stub: StubOllama) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", stub.port)
    body = b'{"model":"llama3","prompt":"x"}'
    request = (
        b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    async with stream:
        await stream.send_all(request + b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
        received = b""
        with trio.fail_after(5):
            while b'"version"' not in received:
                received += await stream.receive_some(65536)
    head, _, rest = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"\r\n0\r\n\r\nHTTP/1.1 200 OK" in rest  # pipelined second answer after the last chunk
