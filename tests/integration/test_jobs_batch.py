"""Acceptance for POST /jobs/batch: many jobs in one request and one commit, each item
checked as POST /jobs checks a submission, all stored or none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.stub import StubOllama

from .conftest import job_rows, wait_for

CAPPED = "capped-key-0123456789"
FREE = "free-key-0123456789ab"
CHATTY = "chatty-key-0123456789"

KEYS = f"""\
capped  {CAPPED}  jobs,inference  max_queued=4
free    {FREE}    jobs,inference
chatty  {CHATTY}  inference
"""
MAX_BATCH = 20
MAX_QUEUE = 30


def bearer(key: str = FREE) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat_item(text: str, model: str = "llama3", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"endpoint": "/api/chat", "body": body, **extra}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    keys = tmp_path / "keys"
    keys.write_text(KEYS)
    return attrs.evolve(settings, api_keys_file=keys, max_batch=MAX_BATCH, max_queue=MAX_QUEUE)


async def post_batch(
    client: httpx.AsyncClient, items: list[Any], key: str = FREE
) -> httpx.Response:
    return await client.post("/jobs/batch", json={"jobs": items}, headers=bearer(key))


def error_of(r: httpx.Response) -> str:
    """The message of an error in Ollama's shape (the job API's)."""
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert set(r.json()) == {"error"}, r.text
    return str(r.json()["error"])


async def test_a_batch_is_stored_in_order_heard_on_the_event_stream_and_run_to_the_end(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    items = [chat_item(f"memo {i}", ref=f"memo:{i}") for i in range(MAX_BATCH)]
    items[3] = {"endpoint": "/api/generate", "body": {"model": "llama3", "prompt": "p"}}
    items[4] = chat_item("urgent", priority=5)
    queued: list[str] = []
    listening = trio.Event()

    async def watch() -> None:
        async with client.stream("GET", "/jobs/events", headers=bearer()) as r:
            async for line in r.aiter_lines():
                listening.set()
                if line.startswith("data: ") and json.loads(line[6:])["state"] == "queued":
                    queued.append(json.loads(line[6:])["id"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await listening.wait()
        r = await post_batch(client, items)
        assert r.status_code == 202, r.text
        jobs = r.json()["jobs"]
        ids = [job["id"] for job in jobs]
        await wait_for(lambda: len(queued) == len(items))
        nursery.cancel_scope.cancel()

    # the answer is in item order, each job as POST /jobs would have made it
    assert [job["ref"] for job in jobs] == [item.get("ref") for item in items]
    assert [job["endpoint"] for job in jobs][3:5] == ["/api/generate", "/api/chat"]
    assert jobs[4]["priority"] == 5
    assert {job["state"] for job in jobs} == {"queued"}
    assert len(set(ids)) == len(items)
    assert sorted(queued) == sorted(ids)
    # listed newest first: the batch's last item first
    listed = (await client.get("/jobs", params={"limit": 100}, headers=bearer())).json()
    assert [job["id"] for job in listed["jobs"]] == ids[::-1]
    # the worker was woken: every job ends done, with the model's answer
    for i, job_id in enumerate(ids):
        done = (await client.get(f"/jobs/{job_id}", params={"wait": 60}, headers=bearer())).json()
        assert done["state"] == "done", done
        if items[i]["endpoint"] == "/api/chat":
            assert done["result"]["message"]["content"] == stub.expected_text(
                "/api/chat", items[i]["body"]
            )
    # the urgent one first, then the others in the order they were given
    ran = [e.body["messages"][0]["content"] for e in stub.requests_of("chat")]
    assert ran[0] == "urgent"
    assert ran[1:] == [f"memo {i}" for i in range(MAX_BATCH) if i not in (3, 4)]
    assert len(job_rows(settings.db)) == len(items)


async def test_one_bad_item_is_a_400_naming_it_and_nothing_is_stored(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    bad_items: list[tuple[Any, str]] = [
        ({"endpoint": "/api/chat", "body": {"messages": []}}, "jobs[2]: model is required"),
        (chat_item("x", priority="high"), "jobs[2]: priority must be"),
        (chat_item("x", colour=1), "jobs[2]: unknown field(s): colour"),
        (chat_item("x", idempotency_key=["k"]), "jobs[2]: idempotency_key must be"),
        # what makes the whole body unstorable is named as the body's
        (chat_item("\ud800"), "request body holds a lone surrogate"),
        ("a string", "jobs[2]: a job submission must be a JSON object"),
    ]
    for bad, message in bad_items:
        items = [chat_item("fine 0"), chat_item("fine 1"), bad, chat_item("fine 3")]
        r = await client.post(
            "/jobs/batch",
            content=json.dumps({"jobs": items}).encode(),
            headers={**bearer(), "Content-Type": "application/json"},
        )
        assert r.status_code == 400, (bad, r.text)
        assert message in error_of(r), (bad, r.text)
    assert job_rows(settings.db) == []


async def test_hostile_bodies_are_a_clean_400(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    hostile: list[tuple[bytes, str]] = [
        (b"", "missing request body"),
        (b"not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'"jobs"', "must be a JSON object"),
        (b'{"jobs": {"0": {}}}', "jobs must be a list"),
        (b'{"jobs": null}', "jobs must be a list"),
        (b'{"jobs": []}', "at least one"),
        (b'{"jobs": [], "extra": true}', "unknown field(s): extra"),
        (b'{"jobs": [NaN]}', "NaN is not a JSON value"),
        (b'{"jobs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested too deeply"),
        (b'{"jobs": [{"body": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001 + b"]}", "nested"),
        (b'{"jobs": [' + b"1," * 100_000 + b"1]}", f"at most {MAX_BATCH} jobs"),
    ]
    for raw, message in hostile:
        r = await client.post("/jobs/batch", content=raw, headers=bearer())
        assert r.status_code in (400, 413), (raw[:40], r.text)
        assert message in error_of(r), (raw[:40], r.text)
    # foreman is still well
    assert (await post_batch(client, [chat_item("after")])).status_code == 202
    assert len(job_rows(settings.db)) == 1


async def test_more_than_max_batch_items_is_a_413_and_nothing_is_stored(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    r = await post_batch(client, [chat_item(f"m {i}") for i in range(MAX_BATCH + 1)])
    assert r.status_code == 413
    assert f"at most {MAX_BATCH} jobs" in error_of(r)
    assert job_rows(settings.db) == []
    full = await post_batch(client, [chat_item(f"m {i}") for i in range(MAX_BATCH)])
    assert full.status_code == 202
    assert len(job_rows(settings.db)) == MAX_BATCH


async def test_a_batch_beyond_the_keys_max_queued_is_refused_whole_with_retry_after(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.hold()
    first = await post_batch(client, [chat_item("a"), chat_item("b"), chat_item("c")], CAPPED)
    assert first.status_code == 202
    # two more would make five of the key's four: the whole batch is refused
    refused = await post_batch(client, [chat_item("d"), chat_item("e")], CAPPED)
    assert refused.status_code == 429
    assert "max_queued=4" in error_of(refused)
    assert int(refused.headers["retry-after"]) > 0
    assert len(job_rows(settings.db)) == 3
    # a batch that could never fit is no reason to wait and try again
    never = await post_batch(client, [chat_item(f"n {i}") for i in range(5)], CAPPED)
    assert never.status_code == 413
    assert "max_queued=4" in error_of(never)
    assert "retry-after" not in never.headers
    # one more fits; another key is not held back
    assert (await post_batch(client, [chat_item("d")], CAPPED)).status_code == 202
    assert (await post_batch(client, [chat_item("other")], FREE)).status_code == 202
    assert len(job_rows(settings.db)) == 5
    stub.release()
    await wait_for(lambda: all(r["state"] == "done" for r in job_rows(settings.db)))
    assert (await post_batch(client, [chat_item(f"x {i}") for i in range(4)], CAPPED)).is_success


async def test_concurrent_batches_cannot_overshoot_a_keys_max_queued(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.hold()
    answers: list[int] = []

    async def send(i: int) -> None:
        items = [chat_item(f"{i}.{j}") for j in range(3)]
        answers.append((await post_batch(client, items, CAPPED)).status_code)

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(send, i)
    assert sorted(answers) == [202, 429, 429, 429]
    assert len(job_rows(settings.db)) == 3
    stub.release()


async def test_a_batch_beyond_the_queues_limit_is_a_503_and_nothing_is_stored(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    stub.hold()
    assert (await post_batch(client, [chat_item(f"a {i}") for i in range(20)])).is_success
    await stub.wait_until(lambda: stub.inflight_inference == 1)
    # 19 queued (one is running): 11 more would pass max_queue=30, 10 more would not
    full = await post_batch(client, [chat_item(f"b {i}") for i in range(12)])
    assert full.status_code == 503
    assert int(full.headers["retry-after"]) > 0
    assert len(job_rows(settings.db)) == 20
    assert (await post_batch(client, [chat_item(f"c {i}") for i in range(11)])).is_success
    assert len(job_rows(settings.db)) == 31
    stub.release()


async def test_each_items_idempotency_key_acts_as_the_header_does_for_post_jobs(
    client: httpx.AsyncClient, stub: StubOllama, settings: Settings
) -> None:
    items = [
        chat_item("one", idempotency_key="k-1"),
        chat_item("no key"),
        chat_item("two", idempotency_key="k-2", ref="r"),
    ]
    first = await post_batch(client, items)
    assert first.status_code == 202
    ids = [job["id"] for job in first.json()["jobs"]]
    # the same batch again (its keys in another order and spacing): the same keyed jobs
    # and only the unkeyed item is new
    respelled = [dict(reversed(list(item.items()))) for item in items]
    again = await client.post(
        "/jobs/batch",
        content=json.dumps({"jobs": respelled}, indent=3).encode(),
        headers=bearer(),
    )
    assert again.status_code == 202
    again_ids = [job["id"] for job in again.json()["jobs"]]
    assert (again_ids[0], again_ids[2]) == (ids[0], ids[2])
    assert again_ids[1] != ids[1]
    assert len(job_rows(settings.db)) == 4
    # a key reused with another request: 409 naming the item, and its neighbours not stored
    conflict = await post_batch(
        client, [chat_item("new"), chat_item("changed", idempotency_key="k-2")]
    )
    assert conflict.status_code == 409
    message = error_of(conflict)
    assert message.startswith("jobs[1]: ")
    assert "idempotency key" in message
    assert ids[2] in message
    # a key twice in one batch: one job; with two different requests: a conflict
    twice = await post_batch(
        client, [chat_item("dup", idempotency_key="k-3"), chat_item("dup", idempotency_key="k-3")]
    )
    assert twice.status_code == 202
    assert len({job["id"] for job in twice.json()["jobs"]}) == 1
    clash = await post_batch(
        client, [chat_item("x", idempotency_key="k-4"), chat_item("y", idempotency_key="k-4")]
    )
    assert clash.status_code == 409
    assert error_of(clash).startswith("jobs[1]: ")
    assert len(job_rows(settings.db)) == 5
    # keys are each API key's own: another key's k-1 is a job of its own
    other = await post_batch(client, [chat_item("one", idempotency_key="k-1")], CAPPED)
    assert other.status_code == 202
    assert other.json()["jobs"][0]["id"] != ids[0]
    # every keyed job ran once
    for job_id in ids:
        await client.get(f"/jobs/{job_id}", params={"wait": 60}, headers=bearer())
    assert [e.body["messages"][0]["content"] for e in stub.requests_of("chat")].count("one") <= 2


async def test_a_key_without_the_jobs_scope_or_no_key_is_refused(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    items = {"jobs": [chat_item("x")]}
    no_key = await client.post("/jobs/batch", json=items)
    assert no_key.status_code == 401
    chatty = await client.post("/jobs/batch", json=items, headers=bearer(CHATTY))
    assert chatty.status_code == 403
    assert "jobs" in error_of(chatty)
    assert job_rows(settings.db) == []


async def test_the_openapi_document_describes_the_batch_route(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json", headers=bearer())).json()
    post = spec["paths"]["/jobs/batch"]["post"]
    assert {"202", "400", "409", "413", "429", "503"} <= set(post["responses"])
    batch = spec["components"]["schemas"]["SubmitBatch"]
    assert batch["required"] == ["jobs"]
    item = spec["components"]["schemas"]["BatchItem"]
    submit = spec["components"]["schemas"]["Submit"]
    assert set(item["properties"]) == set(submit["properties"]) | {"idempotency_key"}
