"""Acceptance for the job API: submit now, collect later, watch live, manage the queue."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.store import Store
from foreman.stub import StubOllama

from .conftest import job_rows, wait_for


def chat_job(model: str, text: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"endpoint": "/api/chat", "body": body, **extra}


async def submit(client: httpx.AsyncClient, payload: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = await client.post("/jobs", json=payload, **kw)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/jobs/{r.json()['id']}"
    return dict(r.json())


async def test_a_thousand_submissions_all_complete_and_are_readable_by_id(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    ids: list[str] = []

    async def batch(start: int) -> None:
        for i in range(start, start + 100):
            job = await submit(client, chat_job(["llama3", "mistral"][i % 2], f"memo {i}"))
            assert job["state"] == "queued"
            ids.append(job["id"])

    async with trio.open_nursery() as nursery:
        for start in range(0, 1000, 100):
            nursery.start_soon(batch, start)
    assert len(set(ids)) == 1000
    for job_id in ids:
        r = await client.get(f"/jobs/{job_id}", params={"wait": 60})
        job = r.json()
        assert job["state"] == "done", job
        body = {"model": job["model"], "messages": [{"role": "user", "content": ""}]}
        assert job["result"]["done"] is True
        assert isinstance(job["result"]["message"]["content"], str)
        del body
    assert stub.max_inflight_inference == 1
    # async jobs ask Ollama for a whole answer, never a stream
    assert {e.body.get("stream") for e in stub.requests_of("chat")} == {False}
    # two models, interleaved arrivals: drained with few loads
    assert sum(stub.loads.values()) <= 4


async def test_results_equal_the_models_output(client: httpx.AsyncClient, stub: StubOllama) -> None:
    job = await submit(client, chat_job("llama3", "title this"))
    done = (await client.get(f"/jobs/{job['id']}", params={"wait": 30})).json()
    assert done["result"]["message"]["content"] == stub.expected_text(
        "/api/chat", {"model": "llama3", "messages": [{"role": "user", "content": "title this"}]}
    )
    for key in ("created_at", "started_at", "finished_at"):
        assert done[key].endswith("Z")
    assert done["attempts"] == 1
    assert done["error"] is None


async def test_high_priority_job_for_another_model_runs_next(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    stub.hold()
    first = await submit(client, chat_job("llama3", "running"))
    await stub.wait_until(lambda: stub.inflight_inference == 1)
    low = [await submit(client, chat_job("llama3", f"low {i}")) for i in range(3)]
    urgent = await submit(client, chat_job("mistral", "a user waits", priority=10))
    stub.release()
    for job in [first, *low, urgent]:
        await client.get(f"/jobs/{job['id']}", params={"wait": 30})
    ran = [e.body["messages"][0]["content"] for e in stub.requests_of("chat")]
    assert ran == ["running", "a user waits", "low 0", "low 1", "low 2"]


async def test_same_idempotency_key_twice_concurrently_makes_one_job(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    answers: list[dict[str, Any]] = []

    async def send() -> None:
        answers.append(
            await submit(client, chat_job("llama3", "once"), headers={"Idempotency-Key": "k-1"})
        )

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(send)
    assert len({a["id"] for a in answers}) == 1
    await client.get(f"/jobs/{answers[0]['id']}", params={"wait": 30})
    assert len(stub.requests_of("chat")) == 1
    assert len(job_rows(settings.db)) == 1
    conflict = await client.post(
        "/jobs", json=chat_job("llama3", "different"), headers={"Idempotency-Key": "k-1"}
    )
    assert conflict.status_code == 409
    assert "idempotency key" in conflict.json()["error"]


async def test_sync_route_idempotency_key_answers_from_the_existing_job(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    body = {"model": "llama3", "messages": [{"role": "user", "content": "x"}], "stream": False}
    headers = {"Idempotency-Key": "sync-1"}
    first = await client.post("/api/chat", json=body, headers=headers)
    again = await client.post("/api/chat", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.headers["x-foreman-job-id"] == again.headers["x-foreman-job-id"]
    assert again.json()["message"] == first.json()["message"]
    assert len(stub.requests_of("chat")) == 1


async def test_cancel_a_queued_job_and_it_never_reaches_ollama(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    stub.hold()
    running = await submit(client, chat_job("llama3", "busy"))
    await stub.wait_until(lambda: stub.inflight_inference == 1)
    queued = await submit(client, chat_job("mistral", "never"))
    r = await client.post(f"/jobs/{queued['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["state"] == "cancelled"
    again = await client.post(f"/jobs/{queued['id']}/cancel")
    assert again.status_code == 409
    stub.release()
    await client.get(f"/jobs/{running['id']}", params={"wait": 30})
    assert all(e.model != "mistral:latest" for e in stub.requests)


async def test_cancel_a_running_job_closes_its_upstream_request(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    stub.hold()
    job = await submit(client, chat_job("llama3", "long"))
    await stub.wait_until(lambda: stub.inflight_inference == 1)
    r = await client.post(f"/jobs/{job['id']}/cancel")
    assert r.json()["state"] == "cancelled"
    (entry,) = stub.requests_of("chat")
    with trio.fail_after(5):
        await stub.wait_until(lambda: entry.finished)
    assert entry.cancelled
    stub.release()
    assert (await client.get(f"/jobs/{job['id']}")).json()["state"] == "cancelled"


async def test_retry_of_a_failed_job_runs_it_again(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    stub.add_fault("status", status=400, message="bad thing", count=1, request_kind="chat")
    job = await submit(client, chat_job("llama3", "retry me"))
    failed = (await client.get(f"/jobs/{job['id']}", params={"wait": 30})).json()
    assert failed["state"] == "failed"
    assert failed["error"] == "bad thing"
    assert (await client.post(f"/jobs/{job['id']}/retry")).json()["state"] == "queued"
    done = (await client.get(f"/jobs/{job['id']}", params={"wait": 30})).json()
    assert done["state"] == "done"
    assert done["attempts"] == 1
    assert len(stub.requests_of("chat")) == 2
    conflict = await client.post(f"/jobs/{job['id']}/retry")
    assert conflict.status_code == 409


async def test_delete_and_purge_remove_exactly_the_terminal_jobs_asked_for(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    finished = [await submit(client, chat_job("llama3", f"f{i}")) for i in range(3)]
    for job in finished:
        await client.get(f"/jobs/{job['id']}", params={"wait": 30})
    stub.hold()
    running = await submit(client, chat_job("llama3", "running"))
    await stub.wait_until(lambda: stub.inflight_inference == 1)
    queued = await submit(client, chat_job("llama3", "queued"))
    assert (await client.delete(f"/jobs/{running['id']}")).status_code == 409
    assert (await client.delete(f"/jobs/{finished[0]['id']}")).json() == {
        "deleted": finished[0]["id"]
    }
    assert (await client.get(f"/jobs/{finished[0]['id']}")).status_code == 404
    assert (await client.delete("/jobs", params={"older_than": 3600})).json() == {"purged": 0}
    assert (await client.delete("/jobs", params={"older_than": 0})).json() == {"purged": 2}
    left = {row["id"] for row in job_rows(settings.db)}
    assert left == {running["id"], queued["id"]}
    stub.release()


async def test_listing_is_newest_first_with_filters_and_a_cursor(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    made = [
        await submit(client, chat_job(["llama3", "mistral"][i % 2], f"{i}", ref=f"note:{i % 3}"))
        for i in range(7)
    ]
    for job in made:
        await client.get(f"/jobs/{job['id']}", params={"wait": 30})
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/jobs", params=params)).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [j["id"] for j in reversed(made)]
    mistral = (await client.get("/jobs", params={"model": "mistral:latest"})).json()["jobs"]
    assert [j["id"] for j in mistral] == [made[5]["id"], made[3]["id"], made[1]["id"]]
    both = (await client.get("/jobs", params={"model": "llama3", "ref": "note:0"})).json()
    assert [j["id"] for j in both["jobs"]] == [made[6]["id"], made[0]["id"]]
    done = (await client.get("/jobs", params={"state": "done", "limit": 2})).json()
    assert len(done["jobs"]) == 2
    assert done["next_cursor"]


async def test_long_poll_and_event_stream_hear_the_end_without_reading_the_database(
    client: httpx.AsyncClient, stub: StubOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.hold()
    job = await submit(client, chat_job("llama3", "watched"))
    await stub.wait_until(lambda: stub.inflight_inference == 1)
    reads: list[str] = []
    real_read = Store._read

    async def counting_read(self: Store, fn: Any, *args: Any) -> Any:
        reads.append(getattr(fn, "__name__", "?"))
        return await real_read(self, fn, *args)

    events: list[dict[str, Any]] = []
    polled: list[dict[str, Any]] = []
    heard: dict[str, float] = {}
    listening = trio.Event()

    async def stream() -> None:
        async with client.stream("GET", f"/jobs/{job['id']}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    listening.set()
        heard["sse"] = trio.current_time()

    async def poll() -> None:
        r = await client.get(f"/jobs/{job['id']}", params={"wait": 60})
        polled.append(r.json())
        heard["poll"] = trio.current_time()

    monkeypatch.setattr(Store, "_read", counting_read)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream)
        await listening.wait()
        nursery.start_soon(poll)
        # each reads the job when it starts waiting (the event stream twice: to answer
        # 404 for an unknown job, then after subscribing, so no change is missed)...
        await wait_for(lambda: reads.count("get") == 3)
        reads.clear()
        # ...and never again while it waits
        with trio.move_on_after(0.5):
            await trio.sleep_forever()
        assert reads == []
        monkeypatch.undo()
        finished_at = trio.current_time()
        stub.release()
    assert polled[0]["state"] == "done"
    assert [e["state"] for e in events][-1] == "done"
    assert events[0]["state"] == "working"
    # pushed, not polled: both hear the end promptly (a generous bound for slow machines)
    assert heard["sse"] - finished_at < 5
    assert heard["poll"] - finished_at < 5


async def test_a_finished_jobs_event_stream_gives_the_final_state_at_once(
    client: httpx.AsyncClient,
) -> None:
    job = await submit(client, chat_job("llama3", "x"))
    await client.get(f"/jobs/{job['id']}", params={"wait": 30})
    async with client.stream("GET", f"/jobs/{job['id']}/events") as r:
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert len(lines) == 1
    assert json.loads(lines[0][6:])["state"] == "done"


async def test_sync_jobs_take_priority_and_ref_headers_and_are_visible_while_running(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    stub.hold()
    body = {"model": "llama3", "messages": [{"role": "user", "content": "s"}], "stream": False}
    headers = {"X-Foreman-Priority": "7", "X-Foreman-Ref": "memo:9"}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: client.post("/api/chat", json=body, headers=headers))
        await stub.wait_until(lambda: stub.inflight_inference == 1)
        (job,) = (await client.get("/jobs", params={"ref": "memo:9"})).json()["jobs"]
        assert (job["state"], job["priority"]) == ("working", 7)
        stub.release()
    bad = await client.post("/api/chat", json=body, headers={"X-Foreman-Priority": "high"})
    assert bad.status_code == 400
    assert "X-Foreman-Priority" in bad.json()["error"]


async def test_bad_input_to_every_job_route_is_a_clear_400(client: httpx.AsyncClient) -> None:
    bad_posts: list[tuple[Any, str]] = [
        ({"endpoint": "/api/embed", "body": {}}, "endpoint must be one of"),
        ({"endpoint": "/api/chat", "body": "hi"}, "body must be a JSON object"),
        ({"endpoint": "/api/chat", "body": {"messages": []}}, "model is required"),
        ({"endpoint": "/api/chat", "body": {"model": "m"}, "priority": "hi"}, "priority"),
        ({"endpoint": "/api/chat", "body": {"model": "m"}, "priority": 1.5}, "priority"),
        ({"endpoint": "/api/chat", "body": {"model": "m"}, "max_attempts": 0}, "max_attempts"),
        ({"endpoint": "/api/chat", "body": {"model": "m"}, "deadline": -1}, "deadline"),
        ({"endpoint": "/api/chat", "body": {"model": "m"}, "ref": ""}, "ref"),
        ({"endpoint": "/api/chat", "body": {"model": "m"}, "colour": 1}, "unknown field"),
        ([1, 2], "must be a JSON object"),
    ]
    for payload, message in bad_posts:
        r = await client.post("/jobs", json=payload)
        assert r.status_code == 400, (payload, r.text)
        assert message in r.json()["error"], (payload, r.json())
    gets: list[tuple[str, dict[str, Any], str]] = [
        ("/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV", {"wait": -1}, "wait must be"),
        ("/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV", {"wait": "soon"}, "wait must be"),
        ("/jobs", {"cursor": "!!nope"}, "cursor"),
        ("/jobs", {"state": "sleeping"}, "state must be one of"),
        ("/jobs", {"limit": 0}, "limit must be a whole number from 1 to 500"),
        ("/jobs", {"limit": 100000}, "limit must be a whole number from 1 to 500"),
        ("/jobs", {"limit": "ten"}, "limit must be a whole number from 1 to 500"),
        ("/jobs", {"limit": "2.5"}, "limit must be a whole number from 1 to 500"),
    ]
    for path, params, message in gets:
        r = await client.get(path, params=params)
        assert r.status_code == 400, (path, params, r.text)
        assert message in r.json()["error"]
    assert (await client.delete("/jobs")).status_code == 400
    assert (await client.delete("/jobs", params={"older_than": "x"})).status_code == 400
    missing = await client.get("/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert missing.status_code == 404
    assert "not found" in missing.json()["error"]
    for verb in ("cancel", "retry"):
        r = await client.post(f"/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/{verb}")
        assert r.status_code == 404


async def test_openapi_description_matches_the_job_routes(
    client: httpx.AsyncClient, foreman: str
) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for path, method, status in [
        ("/jobs", "post", "202"),
        ("/jobs", "get", "200"),
        ("/jobs", "delete", "200"),
        ("/jobs/{id}", "get", "404"),
        ("/jobs/{id}/cancel", "post", "409"),
        ("/jobs/{id}/retry", "post", "409"),
        ("/jobs/{id}", "delete", "409"),
        ("/jobs/{id}/events", "get", "200"),
    ]:
        assert status in paths[path][method]["responses"], (path, method)
    submit = spec["components"]["schemas"]["Submit"]
    assert set(submit["properties"]["endpoint"]["enum"]) >= {"/api/chat", "/api/generate"}
    # what the spec says is what the server does: a submission missing `body` is a 400,
    # an unknown job 404, a conflicting retry 409
    assert (await client.post("/jobs", json={"endpoint": "/api/chat"})).status_code == 400
    assert submit["required"] == ["endpoint", "body"]
    job = await submit_job(client)
    assert set(job) <= set(spec["components"]["schemas"]["Job"]["properties"])
    states = spec["components"]["schemas"]["Job"]["properties"]["state"]["enum"]
    assert job["state"] in states


async def submit_job(client: httpx.AsyncClient) -> dict[str, Any]:
    return await submit(client, chat_job("llama3", "spec"))
