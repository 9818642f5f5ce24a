"""Every fault switch, seen from a real HTTP client, and the record of what it did."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from foreman.stub import BUSY_MESSAGE, StubOllama

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}


async def read_lines(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], *, into: list[str]
) -> None:
    """Stream an answer's lines into `into`, which keeps what arrived if the stream breaks."""
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            into.append(line)  # noqa: PERF401 - kept line by line for when the stream breaks


async def wait_finished(stub: StubOllama, count: int) -> None:
    with trio.fail_after(5):
        await stub.wait_until(
            lambda: len(stub.requests) >= count and all(e.finished for e in stub.requests)
        )


async def test_reset_drops_the_connection_before_answering(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.add_fault("reset", path="/api/chat")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await client.post("/api/chat", json=CHAT)
    ok = await client.post("/api/chat", json={**CHAT, "stream": False})
    assert ok.status_code == 200
    reset, served = stub.requests
    assert (reset.fault, reset.status, reset.start) == ("reset", None, None)
    assert served.fault is None
    assert served.status == 200


async def test_status_fault_answers_an_ollama_error(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.add_fault("status", status=503, count=2)
    for _ in range(2):
        busy = await client.post("/api/generate", json={"model": "llama3", "prompt": "x"})
        assert busy.status_code == 503
        message = "server busy, please try again.  maximum pending requests exceeded"
        assert busy.json() == {"error": message}
    assert (await client.get("/api/tags")).status_code == 200
    stub.add_fault("status", status=500, message="boom", path="/v1/chat/completions")
    v1 = await client.post("/v1/chat/completions", json=CHAT)
    assert v1.status_code == 500
    assert v1.json() == {
        "error": {"message": "boom", "type": "api_error", "param": None, "code": None}
    }
    assert [e.fault for e in stub.requests] == ["status", "status", None, "status"]
    assert BUSY_MESSAGE.count("  ") == 1


async def test_hang_never_answers_until_the_client_gives_up(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.add_fault("hang", path="/api/chat")
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/api/chat", json=CHAT, timeout=httpx.Timeout(10, read=0.2))
    await wait_finished(stub, 1)
    entry = stub.requests[0]
    assert entry.fault == "hang"
    assert entry.cancelled
    assert entry.status is None


async def test_cut_stops_a_stream_without_its_terminating_chunk(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.add_fault("cut", after=3)
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        await read_lines(client, "/api/chat", CHAT, into=lines)
    assert len(lines) == 3
    assert all(json.loads(line)["done"] is False for line in lines)
    await wait_finished(stub, 1)
    assert stub.requests[0].fault == "cut"
    assert not stub.requests[0].cancelled


async def test_cut_with_rst_resets_mid_stream(stub: StubOllama, client: httpx.AsyncClient) -> None:
    stub.add_fault("cut", after=1, rst=True)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await read_lines(client, "/api/generate", {**CHAT, "prompt": "x"}, into=[])


async def test_cut_truncates_a_plain_body(client: httpx.AsyncClient, stub: StubOllama) -> None:
    stub.add_fault("cut")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/api/chat", json={**CHAT, "stream": False})


async def test_mid_error_ends_the_stream_with_an_error_line(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.add_fault("mid_error", after=2, message="something broke")
    async with client.stream("POST", "/api/chat", json=CHAT) as response:
        lines = [json.loads(line) async for line in response.aiter_lines()]
    assert len(lines) == 3
    assert lines[-1] == {"error": "something broke"}
    assert not any(line.get("done") for line in lines)
    stub.add_fault("mid_error")
    plain = await client.post("/api/chat", json={**CHAT, "stream": False})
    assert plain.status_code == 500
    assert "error" in plain.json()


async def test_faults_on_openai_streams(stub: StubOllama, client: httpx.AsyncClient) -> None:
    body = {**CHAT, "stream": True}
    stub.add_fault("mid_error", after=2, path="/v1/chat/completions")
    response = await client.post("/v1/chat/completions", json=body)
    events = [e for e in response.text.split("\n\n") if e]
    assert len(events) == 3
    assert "[DONE]" not in response.text
    assert json.loads(events[-1][len("data: ") :])["choices"][0]["delta"]["content"] == ""
    stub.add_fault("cut", after=4, path="/v1/chat/completions")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/v1/chat/completions", json=body)


async def test_fault_filters_by_path_model_and_kind(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.add_fault("status", status=500, model="mistral", count=None)
    stub.add_fault("status", status=400, request_kind="load", count=None)
    assert (await client.post("/api/chat", json={**CHAT, "stream": False})).status_code == 200
    mistral = {**CHAT, "model": "mistral:latest", "stream": False}
    assert (await client.post("/api/chat", json=mistral)).status_code == 500
    assert (await client.post("/api/generate", json={"model": "llama3"})).status_code == 400
    stub.clear_faults()
    assert (await client.post("/api/chat", json=mistral)).status_code == 200


async def test_refuse_then_listen_again_on_the_same_port(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    port = stub.port
    assert (await client.get("/api/version")).status_code == 200
    stub.add_fault("refuse", seconds=0.3)
    assert not stub.listening
    with pytest.raises(httpx.ConnectError):
        await client.get("/api/version")
    with trio.fail_after(5):
        while True:
            try:
                response = await client.get("/api/version")
                break
            except httpx.ConnectError:
                await trio.sleep(0.02)
    assert response.status_code == 200
    assert stub.port == port
    assert not stub.refusing


async def test_stop_listening_drops_requests_in_flight(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.hold()
    failures: list[BaseException] = []

    async def doomed() -> None:
        try:
            await client.post("/api/chat", json=CHAT)
        except httpx.TransportError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(doomed)
        with trio.fail_after(5):
            await stub.wait_until(lambda: stub.inflight_inference == 1)
        stub.stop_listening()
    stub.release()
    assert len(failures) == 1
    assert stub.requests[0].fault == "down"
    assert not stub.requests[0].cancelled
    with pytest.raises(httpx.ConnectError):
        await client.get("/")
    await stub.start_listening()
    assert (await client.get("/")).text == "Ollama is running"
    assert stub.inflight_inference == 0


async def test_faults_through_the_control_api(stub: StubOllama, client: httpx.AsyncClient) -> None:
    armed = await client.post(
        "/_stub/faults", json={"faults": [{"kind": "status", "status": 502, "count": None}]}
    )
    assert armed.status_code == 200
    assert armed.json()["faults"][0]["status"] == 502
    assert (await client.get("/api/tags")).status_code == 502
    assert (await client.get("/_stub/state")).status_code == 200  # control is never faulted
    bad = await client.post("/_stub/faults", json={"kind": "explode"})
    assert bad.status_code == 400
    assert (await client.delete("/_stub/faults")).json() == {"faults": []}
    assert (await client.get("/api/tags")).status_code == 200
    assert [entry.path for entry in stub.requests] == ["/api/tags", "/api/tags"]


async def test_refuse_through_the_control_api_keeps_the_control_connection(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    await client.post("/_stub/faults", json={"kind": "refuse"})
    async with httpx.AsyncClient(base_url=stub.url) as other:
        with pytest.raises(httpx.ConnectError):
            await other.get("/")
    state = (await client.get("/_stub/state")).json()
    assert state["refusing"]
    assert not state["listening"]
    await client.delete("/_stub/faults")
    with trio.fail_after(5):
        await stub.wait_until(lambda: stub.listening)
    async with httpx.AsyncClient(base_url=stub.url) as other:
        assert (await other.get("/")).status_code == 200


async def test_load_delay_can_change_at_run_time(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    changed = await client.post("/_stub/config", json={"load_delay": 0.05, "tokens": 2})
    assert changed.json()["load_delay"] == 0.05
    assert stub.config.tokens == 2
    bad = await client.post("/_stub/config", json={"tokens": "many"})
    assert bad.status_code == 400
    assert stub.config.tokens == 2
    answer = (await client.post("/api/chat", json={**CHAT, "stream": False})).json()
    assert answer["eval_count"] == 2
    assert stub.requests[0].load_seconds >= 0.05


async def test_control_api_reports_and_resets_the_record(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    await client.post("/api/chat", json={**CHAT, "stream": False, "keep_alive": "10m"})
    record = (await client.get("/_stub/requests")).json()
    (entry,) = record["requests"]
    assert entry["kind"] == "chat"
    assert entry["model"] == "llama3:latest"
    assert entry["keep_alive"] == "10m"
    assert entry["body"]["messages"] == CHAT["messages"]
    assert entry["status"] == 200
    assert entry["cancelled"] is False
    assert entry["loaded"] is True
    assert record["counters"]["loads_by_model"] == {"llama3:latest": 1}
    assert record["counters"]["loads"] == 1
    assert record["slot_events"][0]["event"] == "load"
    state = (await client.get("/_stub/state")).json()
    assert state["slots"]["chat"]["model"] == "llama3:latest"
    assert (await client.delete("/_stub/requests")).status_code == 200
    assert stub.requests == []
    assert stub.loads == {}


async def test_wait_endpoint_blocks_until_counters_reach_values(
    stub: StubOllama, client: httpx.AsyncClient
) -> None:
    stub.hold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, "/api/chat", json=CHAT))
        waited = await client.get("/_stub/wait", params={"inflight_inference": 1, "timeout": 5})
        assert waited.status_code == 200
        assert waited.json()["counters"]["inflight_inference"] == 1
        stub.release()
    late = await client.get("/_stub/wait", params={"requests": 5, "timeout": 0.01})
    assert late.status_code == 408
