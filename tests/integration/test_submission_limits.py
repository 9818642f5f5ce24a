"""Acceptance: what a submission may hold, and that one bad submission or one bad stored row
harms nobody else."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import httpx
import trio
from ulid import ULID

from foreman.config import Settings
from foreman.stub import StubOllama

from .conftest import job_rows

LONE_SURROGATE = "lone surrogate escape"


def chat_job(model: str, text: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"endpoint": "/api/chat", "body": body, **extra}


def ollama_error(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.headers
    error = r.json()["error"]
    assert isinstance(error, str), r.text
    return error


def openai_error(r: httpx.Response) -> str:
    error = r.json()["error"]
    assert isinstance(error, dict), r.text
    assert error["type"] == "invalid_request_error", r.text
    return str(error["message"])


async def test_bad_submissions_among_thirty_concurrent_good_ones_harm_none_of_them(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # regression: a model name with a lone surrogate failed its whole group commit: the
    # thirty or so submissions stored with it got 500 and were lost
    lone = b'{"endpoint":"/api/chat","body":{"model":"\\ud800","messages":[]}}'
    nested = (
        b'{"endpoint":"/api/chat","body":{"model":"llama3",'
        b'"messages":[{"role":"user","content":"a\\udfffb"}]}}'
    )
    good: list[httpx.Response] = []
    bad: list[httpx.Response] = []

    async def post_good(i: int) -> None:
        good.append(await client.post("/jobs", json=chat_job("llama3", f"memo {i}", ref=f"g{i}")))

    async def post_bad(raw: bytes) -> None:
        bad.append(await client.post("/jobs", content=raw))

    async with trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(post_good, i)
            if i % 6 == 3:
                nursery.start_soon(post_bad, lone if i % 12 == 3 else nested)

    assert [r.status_code for r in good] == [202] * 30, [r.text for r in good]
    assert [r.status_code for r in bad] == [400] * 5
    assert all(LONE_SURROGATE in ollama_error(r) for r in bad)
    refs = sorted(row["ref"] for row in job_rows(settings.db))
    assert refs == sorted(f"g{i}" for i in range(30))
    listed = (await client.get("/jobs", params={"limit": 100})).json()["jobs"]
    assert len(listed) == 30


async def test_text_and_numbers_that_cannot_be_stored_are_a_400_in_each_familys_shape(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    native = [
        ("/api/chat", b'{"model":"\\ud800","messages":[]}', LONE_SURROGATE),
        ("/api/generate", b'{"model":"llama3","prompt":"x\\ud83d"}', LONE_SURROGATE),
        ("/api/chat", b'{"model":"llama3","options":{"num_ctx":NaN}}', "NaN is not a JSON"),
        ("/api/generate", b'{"model":"llama3","options":{"num_ctx":1e400}}', "too large"),
        ("/api/chat", b'{"model":"llama3\\u0000","messages":[]}', "printable name"),
    ]
    for path, raw, message in native:
        r = await client.post(path, content=raw)
        assert r.status_code == 400, (path, raw, r.status_code, r.text)
        assert message in ollama_error(r), (path, raw)
    openai = [
        ("/v1/chat/completions", b'{"model":"\\udc00","messages":[]}', LONE_SURROGATE),
        ("/v1/completions", b'{"model":"llama3","temperature":Infinity}', "Infinity is not"),
        ("/v1/completions", b'{"model":"llama3","max_tokens":1e999}', "too large"),
    ]
    for path, raw, message in openai:
        r = await client.post(path, content=raw)
        assert r.status_code == 400, (path, raw, r.status_code, r.text)
        assert message in openai_error(r), (path, raw)
    assert job_rows(settings.db) == []


async def test_a_deadline_that_cannot_be_a_date_is_a_400_and_nothing_is_stored(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # regression: a deadline of 1e308 was stored, its submitter got 500, and every
    # listing that included the job answered 500 until it was purged
    for deadline in (b"1e308", b"31536001", b"1" + b"0" * 400, b"1e400"):
        raw = b'{"endpoint":"/api/chat","body":{"model":"llama3"},"deadline":' + deadline + b"}"
        r = await client.post("/jobs", content=raw)
        assert r.status_code == 400, (deadline, r.status_code, r.text)
        assert "deadline must be" in ollama_error(r) or "too large" in ollama_error(r)
    assert job_rows(settings.db) == []
    assert (await client.get("/jobs")).status_code == 200
    year = await client.post("/jobs", json=chat_job("llama3", "x", deadline=31_536_000))
    assert year.status_code == 202
    assert year.json()["deadline"].endswith("Z")


def insert_old_row(db: str, state: str, **columns: Any) -> str:
    """A job row as an older foreman could have left it (written from outside, as SQL)."""
    job_id = str(ULID())
    row: dict[str, Any] = {
        "id": job_id,
        "endpoint": "/api/chat",
        "model": "llama3",
        "model_key": "llama3:latest",
        "model_name": "llama3:latest",
        "body": b'{"model":"llama3","messages":[]}',
        "stream": 0,
        "state": state,
        "max_attempts": 5,
        "enqueued_at": 1_700_000_000.0,
        "created_at": 1_700_000_000.0,
        **columns,
    }
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        conn.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", tuple(row.values()))
    finally:
        conn.close()
    return job_id


async def test_a_bad_stored_row_breaks_no_listing_and_no_event_stream(
    client: httpx.AsyncClient, settings: Settings, stub: StubOllama
) -> None:
    stub.hold()  # the worker stays busy, so the old queued row waits to be cancelled
    busy = await client.post("/jobs", json=chat_job("llama3", "busy"))
    await stub.wait_until(lambda: stub.inflight_inference == 1)
    done = insert_old_row(
        str(settings.db),
        "done",
        deadline=1e308,
        result="not json {",
        started_at=1_700_000_001.0,
        finished_at=1_700_000_002.0,
    )
    queued = insert_old_row(str(settings.db), "queued", deadline=1e308)

    listing = await client.get("/jobs")
    assert listing.status_code == 200, listing.text
    shown = {job["id"]: job for job in listing.json()["jobs"]}
    assert shown[done]["deadline"] == "9999-12-31T23:59:59.000Z"
    assert shown[done]["result"] == {"raw": "not json {"}
    assert (await client.get(f"/jobs/{queued}")).status_code == 200
    assert (await client.get("/queue")).status_code == 200

    events: list[dict[str, Any]] = []

    async def listen() -> None:
        async with client.stream("GET", "/jobs/events") as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))  # noqa: PERF401 - read as it fills

    def heard(job_id: str) -> bool:
        return any(e["id"] == job_id for e in events)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(listen)
        # the stream subscribes once its answer starts: submit until it hears one
        with trio.fail_after(30):
            while True:
                nudge = (await client.post("/jobs", json=chat_job("mistral", "nudge"))).json()
                with trio.move_on_after(1):
                    while not heard(nudge["id"]):  # noqa: ASYNC110 - the listener's list
                        await trio.sleep(0.01)
                    break
        cancelled = await client.post(f"/jobs/{queued}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["deadline"] == "9999-12-31T23:59:59.000Z"
        later = (await client.post("/jobs", json=chat_job("mistral", "after"))).json()
        # the stream carried the old row's change and went on
        with trio.fail_after(30):
            while not heard(later["id"]):  # noqa: ASYNC110 - the listener's list
                await trio.sleep(0.01)
        assert [e["state"] for e in events if e["id"] == queued] == ["cancelled"]
        nursery.cancel_scope.cancel()
    stub.release()
    assert busy.status_code == 202
