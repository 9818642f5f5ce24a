"""The lean path (foreman/api/lean.py): embeddings and the read-only relayed routes,
served in front of the web framework, keep every check the app makes on them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from foreman.config import Settings
from foreman.stub import StubConfig, StubOllama
from tests.integration.conftest import wait_for

APP = "inference-key-0123456789"
JOBS = "jobs-key-batch-0123456789"
ROOT = "admin-key-root-0123456789"
KEYS = f"app {APP} inference\nbatch {JOBS} jobs\nroot {ROOT} admin\n"
EMBED = {"model": "nomic-embed-text", "input": "a"}
LIMIT = 64 * 1024


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    keys = tmp_path / "keys"
    keys.write_text(KEYS)
    return attrs.evolve(settings, api_keys_file=keys, max_body=LIMIT)


async def test_embeddings_need_a_key_with_the_inference_scope_in_each_familys_shape(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    for headers in ({}, bearer("not-a-key-0123456789"), {"X-Service-Key": "nope"}):
        native = await client.post("/api/embed", json=EMBED, headers=headers)
        assert native.status_code == 401, native.text
        assert native.headers["www-authenticate"].startswith("Bearer")
        assert set(native.json()) == {"error"}
        v1 = await client.post("/v1/embeddings", json=EMBED, headers=headers)
        assert v1.status_code == 401
        assert v1.json()["error"]["type"] == "api_error"
    denied = await client.post("/api/embeddings", json=EMBED, headers=bearer(JOBS))
    assert denied.status_code == 403
    assert "needs inference" in denied.json()["error"]
    caplog.set_level(logging.INFO, logger="foreman.access")
    ok = await client.post("/api/embed", json=EMBED, headers={"X-Service-Key": APP})
    assert ok.status_code == 200, ok.text
    assert ok.json()["embeddings"]

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "foreman.access"]

    # the access log names the key (written once the answer is out), never the key itself
    await wait_for(lambda: any("/api/embed " in line and "key=app" in line for line in logged()))
    assert not any(APP in line for line in logged())


async def test_read_only_routes_need_a_key_too(client: httpx.AsyncClient) -> None:
    for method, path in (("GET", "/api/tags"), ("GET", "/v1/models"), ("GET", "/v1/models/x")):
        refused = await client.request(method, path)
        assert refused.status_code == 401, path
    assert (await client.get("/api/tags", headers=bearer(JOBS))).status_code == 403
    tags = await client.get("/api/tags", headers=bearer(APP))
    assert tags.status_code == 200
    assert {m["name"] for m in tags.json()["models"]} >= {"nomic-embed-text:latest"}


async def _chunked(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 8192):
        yield data[start : start + 8192]
        await trio.lowlevel.checkpoint()


async def test_an_embedding_body_over_max_body_is_413_declared_or_not(
    client: httpx.AsyncClient,
) -> None:
    huge = b'{"model":"nomic-embed-text","input":"' + b"x" * (LIMIT + 10) + b'"}'
    headers = {**bearer(APP), "Content-Type": "application/json"}
    declared = await client.post("/api/embed", content=huge, headers=headers)
    assert declared.status_code == 413
    assert "larger than 65536 bytes" in declared.json()["error"]
    # no Content-Length: counted as it arrives
    sent = await client.post("/v1/embeddings", content=_chunked(huge), headers=headers)
    assert sent.status_code == 413
    assert sent.json()["error"]["type"] == "invalid_request_error"
    scraped = (await client.get("/metrics", headers=bearer(ROOT))).text
    rejected = {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(scraped)
        for s in family.samples
        if s.name == "foreman_rejected_total"
    }
    assert rejected["too_large"] == 2
    # a body just under the limit goes through
    fits = await client.post("/api/embed", json=EMBED, headers=bearer(APP))
    assert fits.status_code == 200


async def test_methods_the_routes_do_not_take_get_the_apps_answer(
    client: httpx.AsyncClient,
) -> None:
    got = await client.get("/api/embed", headers=bearer(APP))
    assert got.status_code == 405
    assert set(got.json()) == {"error"}
    v1 = await client.put("/v1/embeddings", headers=bearer(APP))
    assert v1.status_code == 405
    assert "message" in v1.json()["error"]


async def test_a_bad_body_reaches_ollama_and_its_error_comes_back_as_it_is(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    async with httpx.AsyncClient(base_url=stub.url) as straight:
        direct = await straight.post("/api/embed", content=b"{nope")
    relayed = await client.post("/api/embed", content=b"{nope", headers=bearer(APP))
    assert relayed.status_code == direct.status_code
    assert relayed.content == direct.content


@pytest.mark.parametrize("stub_config", [StubConfig(embed_delay=30.0)])
async def test_a_client_leaving_an_embedding_closes_the_upstream_request(
    foreman: str, stub: StubOllama
) -> None:
    async with httpx.AsyncClient(base_url=foreman, timeout=60) as http:
        with trio.move_on_after(60) as waited:
            async with trio.open_nursery() as nursery:

                async def leave_when_it_runs() -> None:
                    await stub.wait_until(lambda: bool(stub.requests_of("embed")))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(leave_when_it_runs)
                await http.post("/api/embed", json=EMBED, headers=bearer(APP))
        assert not waited.cancelled_caught
    await wait_for(lambda: stub.requests_of("embed")[0].cancelled)
