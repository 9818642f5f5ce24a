"""Acceptance: tunnel-safe waits. A request waiting behind other jobs gets heartbeat bytes
and then its real answer, which the official clients read without trouble.

The issue's scenario is a 100 s wait with FOREMAN_HEARTBEAT=2 behind a tunnel that drops
responses silent for 100 s; scaled down here to keep the suite fast: a 0.2 s heartbeat,
and a wait that lasts until several heartbeats arrived (about a second), not a fixed time.
"""

from __future__ import annotations

import itertools
import json
from functools import partial
from typing import Any

import attrs
import httpx
import ollama
import openai
import pytest
import trio
from openai.types.chat import ChatCompletionMessageParam

from foreman.config import Settings
from foreman.stub import StubOllama

HEARTBEAT = 0.2
# generous: a gap this long between bytes would mean heartbeats stopped
MAX_GAP = 10 * HEARTBEAT
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "title this memo"}]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return attrs.evolve(settings, heartbeat=HEARTBEAT)


async def occupy_worker(client: httpx.AsyncClient, stub: StubOllama, nursery: trio.Nursery) -> None:
    """A job that holds the worker (and so keeps everything else waiting) until release."""
    stub.hold()
    body = {"model": "mistral", "prompt": "long job", "stream": False}
    nursery.start_soon(partial(client.post, "/api/generate", json=body))
    await stub.wait_until(lambda: stub.inflight_inference == 1)


async def read_with_times(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    seen: trio.Event,
    want: int,
    headers: dict[str, str] | None = None,
) -> tuple[httpx.Response, list[tuple[float, bytes]]]:
    """POST and read the answer chunk by chunk with arrival times; `seen` is set once
    `want` chunks arrived."""
    parts: list[tuple[float, bytes]] = []
    async with client.stream("POST", path, json=body, headers=headers) as r:
        async for chunk in r.aiter_raw():
            parts.append((trio.current_time(), chunk))
            if len(parts) >= want:
                seen.set()
    return r, parts


async def test_a_waiting_stream_gets_heartbeat_chunks_then_its_answer(
    client: httpx.AsyncClient, stub: StubOllama, foreman: str
) -> None:
    body = {"model": "llama3", "messages": MESSAGES}
    expected = stub.expected_text("/api/chat", body)
    results: dict[str, Any] = {}
    seen = trio.Event()

    async def raw() -> None:
        results["raw"] = await read_with_times(client, "/api/chat", body, seen, 5)

    async def official() -> None:
        async with ollama.AsyncClient(host=foreman) as reply:
            parts = await reply.chat(model="llama3", messages=MESSAGES, stream=True)
            results["official"] = "".join([p.message.content or "" async for p in parts])

    async with trio.open_nursery() as nursery:
        await occupy_worker(client, stub, nursery)
        started = trio.current_time()
        nursery.start_soon(raw)
        nursery.start_soon(official)
        await seen.wait()  # five heartbeats while the worker is busy elsewhere
        stub.release()

    response, parts = results["raw"]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["x-foreman-heartbeat"] == "1"
    # the header's old name, sent as well for one release
    assert response.headers["x-foreman-keepalive"] == "1"
    lines = [json.loads(line) for line in b"".join(p for _, p in parts).splitlines()]
    heartbeats = [x for x in lines if x["message"]["content"] == "" and not x["done"]]
    assert len(heartbeats) >= 5
    assert all(x["model"] == "llama3" and x["created_at"].endswith("Z") for x in heartbeats)
    assert "".join(x["message"]["content"] for x in lines) == expected
    assert lines[-1]["done"] is True
    times = [started] + [t for t, _ in parts]
    assert max(b - a for a, b in itertools.pairwise(times)) < MAX_GAP
    assert results["official"] == expected


async def test_a_waiting_v1_stream_gets_sse_comments_and_the_openai_client_reads_it(
    client: httpx.AsyncClient, stub: StubOllama, foreman: str
) -> None:
    body = {"model": "llama3", "messages": MESSAGES, "stream": True}
    results: dict[str, Any] = {}
    seen = trio.Event()

    async def raw() -> None:
        results["raw"] = await read_with_times(client, "/v1/chat/completions", body, seen, 3)

    async def official() -> None:
        async with openai.AsyncOpenAI(base_url=f"{foreman}/v1", api_key="x") as oa:
            stream = await oa.chat.completions.create(
                model="llama3", messages=MESSAGES, stream=True
            )
            results["official"] = "".join(
                [c.choices[0].delta.content or "" async for c in stream if c.choices]
            )

    async with trio.open_nursery() as nursery:
        await occupy_worker(client, stub, nursery)
        nursery.start_soon(raw)
        nursery.start_soon(official)
        await seen.wait()
        stub.release()

    response, parts = results["raw"]
    data = b"".join(p for _, p in parts)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert data.startswith(b": keep-alive\n\n: keep-alive\n\n")
    assert data.endswith(b"data: [DONE]\n\n")
    expected = stub.expected_text("/v1/chat/completions", body)
    assert results["official"] == expected


# the header's name, and its old name that still works for one release
@pytest.mark.parametrize("header", ["X-Foreman-Heartbeat", "X-Foreman-Keepalive"])
async def test_non_streamed_heartbeat_is_opt_in_and_stays_valid_json(
    client: httpx.AsyncClient, stub: StubOllama, header: str
) -> None:
    body = {"model": "llama3", "prompt": "tag this", "stream": False}
    results: dict[str, Any] = {}
    seen = trio.Event()

    async def opted_in() -> None:
        headers = {header: "1"}
        results["in"] = await read_with_times(client, "/api/generate", body, seen, 3, headers)

    async def plain() -> None:
        results["plain"] = await client.post("/api/generate", json=body)

    async def overruled() -> None:
        # given both names, the new one wins
        headers = {"X-Foreman-Heartbeat": "0", "X-Foreman-Keepalive": "1"}
        results["overruled"] = await client.post("/api/generate", json=body, headers=headers)

    async with trio.open_nursery() as nursery:
        await occupy_worker(client, stub, nursery)
        nursery.start_soon(opted_in)
        nursery.start_soon(plain)
        nursery.start_soon(overruled)
        await seen.wait()  # the head and three spaces
        stub.release()

    response, parts = results["in"]
    raw = b"".join(p for _, p in parts)
    assert response.status_code == 200
    assert response.headers["x-foreman-heartbeat"] == "1"
    assert raw.startswith(b"   ")
    assert json.loads(raw)["response"] == stub.expected_text("/api/generate", body)
    for unopted in (results["plain"], results["overruled"]):
        assert unopted.status_code == 200
        assert not unopted.content.startswith(b" ")
        assert "x-foreman-heartbeat" not in unopted.headers
        assert "x-foreman-keepalive" not in unopted.headers


async def test_a_failure_after_heartbeats_arrives_in_band_as_ollamas_error_line(
    client: httpx.AsyncClient, stub: StubOllama, foreman: str
) -> None:
    seen = trio.Event()
    results: dict[str, Any] = {}
    body = {"model": "no-such-model", "messages": MESSAGES}

    async def raw() -> None:
        results["raw"] = await read_with_times(client, "/api/chat", body, seen, 2)

    async def official() -> None:
        try:
            async with ollama.AsyncClient(host=foreman) as official_client:
                async for _ in await official_client.chat(
                    model="no-such-model", messages=MESSAGES, stream=True
                ):
                    pass
        except ollama.ResponseError as exc:
            results["official"] = exc

    async with trio.open_nursery() as nursery:
        await occupy_worker(client, stub, nursery)
        nursery.start_soon(raw)
        nursery.start_soon(official)
        await seen.wait()
        stub.release()

    response, parts = results["raw"]
    assert response.status_code == 200  # the status was spent on the heartbeat
    last = json.loads(b"".join(p for _, p in parts).splitlines()[-1])
    assert set(last) == {"error"}
    assert "not found" in last["error"]
    assert "not found" in results["official"].error


async def test_a_repeated_request_waiting_on_its_job_gets_heartbeats_then_the_answer(
    client: httpx.AsyncClient, stub: StubOllama, foreman: str
) -> None:
    """A client that timed out and retries with the same Idempotency-Key waits on the
    job its first attempt made; that wait gets heartbeats too."""
    body = {"model": "llama3", "messages": MESSAGES}
    key = {"Idempotency-Key": "memo-42-title"}
    seen = trio.Event()
    results: dict[str, Any] = {}

    async def first() -> None:
        results["first"] = await client.post("/api/chat", json=body, headers=key)

    async def repeated() -> None:
        results["again"] = await read_with_times(client, "/api/chat", body, seen, 4, key)

    async with trio.open_nursery() as nursery:
        await occupy_worker(client, stub, nursery)
        nursery.start_soon(first)
        with trio.fail_after(30):
            while not (await client.get("/jobs", params={"state": "queued"})).json()["jobs"]:  # noqa: ASYNC110 - until the first request's job is stored
                await trio.sleep(0.01)
        nursery.start_soon(repeated)
        with trio.fail_after(30):
            await seen.wait()  # the head and heartbeat chunks, while the job still waits
        stub.release()

    response, parts = results["again"]
    assert response.status_code == 200
    assert response.headers["x-foreman-heartbeat"] == "1"
    lines = b"".join(p for _, p in parts).splitlines()
    chunks = [json.loads(line) for line in lines]
    assert all(c["done"] is False and c["message"]["content"] == "" for c in chunks[:-1])
    assert len(chunks) >= 4
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(parts)]
    assert max(gaps) < MAX_GAP
    # the last line is the stored answer: the whole text, done
    assert chunks[-1]["done"] is True
    assert chunks[-1]["message"]["content"] == stub.expected_text("/api/chat", body)
    assert results["first"].headers["x-foreman-job-id"] == response.headers["x-foreman-job-id"]
    assert len([e for e in stub.requests_of("chat") if e.model == "llama3:latest"]) == 1
