"""Acceptance: API keys. Who may call what, in each route family's error shape, with the
official clients, and rotation by editing the file."""

from __future__ import annotations

import logging
from pathlib import Path

import attrs
import httpx
import ollama
import openai
import pytest
import trio
from openai.types.chat import ChatCompletionMessageParam

from foreman.config import Settings
from foreman.stub import StubOllama

APP = "inference-key-0123456789"
BATCH = "jobs-key-batch-0123456789"
OTHER = "jobs-key-other-0123456789"
ROOT = "admin-key-root-0123456789"
TOKEN = "metrics-token-0123456789"

KEYS = f"""\
# the keys of the test deployment
app    {APP}    inference
batch  {BATCH}  jobs,inference
other  {OTHER}  jobs
root   {ROOT}   admin
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    keys = tmp_path / "keys"
    keys.write_text(KEYS)
    return attrs.evolve(settings, api_keys_file=keys, metrics_token=TOKEN)


CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def test_no_key_or_a_wrong_key_is_401_in_the_route_familys_shape(
    client: httpx.AsyncClient,
) -> None:
    for headers in ({}, bearer("not-a-key-0123456789"), {"X-Service-Key": "nope"}):
        r = await client.post("/api/chat", json=CHAT, headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert set(r.json()) == {"error"}
        v1 = await client.get("/v1/models", headers=headers)
        assert v1.status_code == 401
        assert v1.json()["error"]["type"] == "api_error"
        assert (await client.get("/jobs", headers=headers)).status_code == 401
    # a route foreman does not serve answers no stranger with its existence
    assert (await client.get("/api/nothing-here")).status_code == 401


async def test_scopes_decide_and_both_headers_carry_a_key(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    pull = {"model": "new-model", "stream": False}
    denied = await client.post("/api/pull", json=pull, headers=bearer(APP))
    assert denied.status_code == 403
    assert "needs admin" in denied.json()["error"]
    allowed = await client.post("/api/pull", json=pull, headers=bearer(ROOT))
    assert allowed.status_code == 200, allowed.text
    assert (await client.post("/api/pull", json=pull, headers={"X-Service-Key": ROOT})).is_success

    r = await client.post("/api/chat", json=CHAT, headers={"X-Service-Key": APP})
    assert r.status_code == 200
    assert r.json()["message"]["content"] == stub.expected_text("/api/chat", CHAT)
    assert (await client.get("/jobs", headers=bearer(APP))).status_code == 403
    assert (await client.post("/api/chat", json=CHAT, headers=bearer(OTHER))).status_code == 403
    # an admin key may do everything
    assert (await client.post("/api/chat", json=CHAT, headers=bearer(ROOT))).status_code == 200
    assert (await client.delete("/jobs?older_than=1", headers=bearer(BATCH))).status_code == 403
    assert (await client.delete("/jobs?older_than=1", headers=bearer(ROOT))).status_code == 200


async def test_health_needs_no_key_and_metrics_takes_admin_or_its_token(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers=bearer(APP))).status_code == 403
    assert (await client.get("/metrics", headers=bearer(ROOT))).status_code == 200
    assert (await client.get("/metrics", headers=bearer(TOKEN))).status_code == 200
    # the metrics token is good for nothing else
    assert (await client.get("/api/tags", headers=bearer(TOKEN))).status_code == 401


async def test_official_clients_work_with_a_key(foreman: str, stub: StubOllama) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "title this memo"}]
    async with ollama.AsyncClient(host=foreman, headers=bearer(APP)) as client:
        reply = await client.chat(model="llama3", messages=messages)
        assert reply.message.content == stub.expected_text(
            "/api/chat", {"model": "llama3", "messages": messages}
        )
        assert (await client.embed(model="nomic-embed-text", input=["a"])).embeddings
    async with ollama.AsyncClient(host=foreman) as keyless:
        with pytest.raises(ollama.ResponseError) as refused:
            await keyless.chat(model="llama3", messages=messages)
    assert refused.value.status_code == 401

    async with openai.AsyncOpenAI(base_url=f"{foreman}/v1", api_key=APP) as oa:
        done = await oa.chat.completions.create(model="llama3", messages=messages)
        assert done.choices[0].message.content
    async with openai.AsyncOpenAI(base_url=f"{foreman}/v1", api_key="wrong-key") as oa:
        with pytest.raises(openai.AuthenticationError):
            await oa.chat.completions.create(model="llama3", messages=messages)


async def test_a_jobs_key_sees_only_its_own_jobs_and_admin_sees_all(
    client: httpx.AsyncClient,
) -> None:
    body = {"endpoint": "/api/generate", "body": {"model": "llama3", "prompt": "x"}}
    made = await client.post("/jobs", json=body, headers=bearer(BATCH))
    assert made.status_code == 202
    job_id = made.json()["id"]
    waited = await client.get(f"/jobs/{job_id}?wait=30", headers=bearer(BATCH))
    assert waited.json()["state"] == "done"
    # a synchronous request made with the same key is its job too
    await client.post("/api/chat", json=CHAT, headers=bearer(BATCH))

    mine = (await client.get("/jobs", headers=bearer(BATCH))).json()["jobs"]
    assert len(mine) == 2
    assert job_id in {j["id"] for j in mine}
    assert (await client.get("/jobs", headers=bearer(OTHER))).json()["jobs"] == []
    for method, path in (
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}?wait=5"),
        ("POST", f"/jobs/{job_id}/retry"),
        ("DELETE", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/events"),
    ):
        r = await client.request(method, path, headers=bearer(OTHER))
        assert r.status_code == 404, (method, path, r.text)
    everyone = (await client.get("/jobs", headers=bearer(ROOT))).json()["jobs"]
    assert len(everyone) == 2


async def test_an_idempotency_key_belongs_to_the_api_key_that_used_it(
    client: httpx.AsyncClient,
) -> None:
    # regression: keys were shared, so another API key's reuse was a 409 naming the first
    # key's job, and any key could squat predictable idempotency keys
    def job(prompt: str) -> dict[str, object]:
        return {"endpoint": "/api/generate", "body": {"model": "llama3", "prompt": prompt}}

    shared = {"Idempotency-Key": "nightly-2024-01-01"}
    mine = await client.post("/jobs", json=job("mine"), headers={**shared, **bearer(BATCH)})
    theirs = await client.post("/jobs", json=job("theirs"), headers={**shared, **bearer(OTHER)})
    assert (mine.status_code, theirs.status_code) == (202, 202), theirs.text
    mine_id, theirs_id = mine.json()["id"], theirs.json()["id"]
    assert mine_id != theirs_id

    # each key's repeat answers from its own job; a conflict names only the caller's job
    again = await client.post("/jobs", json=job("theirs"), headers={**shared, **bearer(OTHER)})
    assert (again.status_code, again.json()["id"]) == (202, theirs_id)
    clash = await client.post("/jobs", json=job("other"), headers={**shared, **bearer(OTHER)})
    assert clash.status_code == 409
    assert theirs_id in clash.json()["error"]
    assert mine_id not in clash.text
    # an admin key's idempotency keys are its own too
    root = await client.post("/jobs", json=job("root"), headers={**shared, **bearer(ROOT)})
    assert root.status_code == 202
    assert root.json()["id"] not in (mine_id, theirs_id)

    # the synchronous routes: the same key from two API keys makes two jobs
    sync = {"Idempotency-Key": "sync-shared"}
    a = await client.post("/api/chat", json=CHAT, headers={**sync, **bearer(APP)})
    b = await client.post("/api/chat", json=CHAT, headers={**sync, **bearer(BATCH)})
    assert (a.status_code, b.status_code) == (200, 200), b.text
    assert a.headers["x-foreman-job-id"] != b.headers["x-foreman-job-id"]
    repeat = await client.post("/api/chat", json=CHAT, headers={**sync, **bearer(BATCH)})
    assert repeat.headers["x-foreman-job-id"] == b.headers["x-foreman-job-id"]
    everyone = (await client.get("/jobs", headers=bearer(ROOT))).json()["jobs"]
    assert len(everyone) == 5


async def test_editing_the_keys_file_rotates_keys_and_keys_are_never_logged(
    client: httpx.AsyncClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert (await client.get("/api/tags", headers=bearer(APP))).status_code == 200
    new = "rotated-inference-key-0123"
    assert settings.api_keys_file is not None
    settings.api_keys_file.write_text(KEYS.replace(APP, new))

    # the file is watched (polled every KEY_FILE_POLL s here): wait for the new key
    with trio.fail_after(30):
        while (await client.get("/api/tags", headers=bearer(new))).status_code != 200:  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert (await client.get("/api/tags", headers=bearer(APP))).status_code == 401
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "key=app" in logged
    assert "keys reloaded" in logged
    for secret in (APP, new, BATCH, ROOT, TOKEN):
        assert secret not in logged


async def test_a_key_beyond_ascii_written_to_the_file_is_refused_and_the_old_keys_stay(
    client: httpx.AsyncClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert settings.api_keys_file is not None
    settings.api_keys_file.write_text(KEYS.replace(APP, "caf\u00e9-inference-key-0123"), "utf-8")

    def refused() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "printable ASCII" in r.getMessage()]

    # the file is watched (polled every KEY_FILE_POLL s here): wait for the refusal
    with trio.fail_after(30):
        while not refused():  # noqa: ASYNC110 - waiting on a log record, not a trio task
            await trio.sleep(0.05)
    (record,) = refused()
    assert record.levelno == logging.ERROR
    assert "line 2: the key of 'app'" in record.getMessage()
    assert "keeping the 4 keys already loaded" in record.getMessage()
    assert "\n" not in record.getMessage()
    assert record.exc_info is None
    assert (await client.get("/api/tags", headers=bearer(APP))).status_code == 200
    assert not any("keys reloaded" in r.getMessage() for r in caplog.records)
    assert "inference-key" not in "\n".join(r.getMessage() for r in caplog.records)
