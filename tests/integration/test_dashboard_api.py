"""The dashboard's data over real sockets: /queue, /queue/events and the page at /ui."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.daemon import run
from foreman.stub import StubOllama

from .conftest import KEY_FILE_POLL

ADMIN = "admin-key-0123456789"
READER = "reader-key-0123456789"
SERVICE = "service-key-0123456789"


def chat(model: str, text: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


async def submit(client: httpx.AsyncClient, model: str, text: str, **extra: Any) -> str:
    r = await client.post(
        "/jobs", json={"endpoint": "/api/chat", "body": chat(model, text), **extra}
    )
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


async def overview(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/queue")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def sse_events(response: httpx.Response) -> AsyncGenerator[tuple[str, Any], None]:
    """(event, data) pairs of a server-sent event stream, comments skipped."""
    kind = "message"
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def test_queue_shows_the_running_job_and_what_waits_for_each_model(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    stub.hold()
    first = await submit(client, "llama3", "first", ref="memo-1")
    await stub.wait_until(lambda: stub.inflight_inference == 1)
    await submit(client, "mistral", "a")
    await submit(client, "mistral", "b", priority=3)
    await submit(client, "llama3", "c")
    data = await overview(client)
    summary = data["summary"]
    assert summary["running"]["id"] == first
    assert summary["running"]["state"] == "working"
    assert summary["running"]["ref"] == "memo-1"
    assert summary["resident"]["chat"]["model"] == "llama3:latest"
    # the resident model's queue first: it drains before the next swap
    waiting = [(w["model"], w["count"], w["resident"]) for w in summary["waiting"]]
    assert waiting == [("llama3:latest", 1, True), ("mistral:latest", 2, False)]
    assert summary["waiting"][1]["top_priority"] == 3
    assert summary["waiting"][1]["overdue"] is False
    assert summary["queued"] == 3
    assert summary["max_wait"] == 600.0
    assert [j["state"] for j in data["jobs"]] == ["queued", "queued", "queued", "working"]
    assert "body" not in data["jobs"][0]
    assert "result" not in data["jobs"][0]
    assert data["you"] == {
        "name": None,
        "scopes": ["admin", "inference", "jobs"],
        "keys_enabled": False,
        "can_act": True,
    }
    stub.release()


async def test_swap_history_shows_one_load_per_model_and_the_swaps_avoided(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    """Arrival order A B A B A would load five times; drained by model it loads twice."""
    stub.hold()
    ids = [await submit(client, "llama3", "0")]
    await stub.wait_until(lambda: stub.inflight_inference == 1)
    for i, model in enumerate(["mistral", "llama3", "mistral", "llama3"], start=1):
        ids.append(await submit(client, model, str(i)))
    stub.release()
    for job_id in ids:
        r = await client.get(f"/jobs/{job_id}", params={"wait": 30})
        assert r.json()["state"] == "done"

    async def settled() -> dict[str, Any]:
        summary: dict[str, Any] = (await overview(client))["summary"]
        return summary

    summary = await settled()
    swaps = [(s["model"], s["jobs"]) for s in summary["swaps"]]
    assert swaps == [("llama3:latest", 3), ("mistral:latest", 2)]
    for swap in summary["swaps"]:
        assert swap["loaded_at"] >= swap["started_at"]
        assert swap["load_ms"] == round((swap["loaded_at"] - swap["started_at"]) * 1000)
    activity = summary["activity"]
    assert activity["finished"] == {"done": 5}
    assert activity["done_last_hour"] == 5
    assert (activity["loads"], activity["arrival_loads"], activity["swaps_avoided"]) == (2, 5, 3)
    assert summary["running"] is None
    assert summary["waiting"] == []


async def test_event_stream_sends_a_snapshot_then_each_change_and_fresh_summaries(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    before = await submit(client, "llama3", "before")
    await client.get(f"/jobs/{before}", params={"wait": 30})
    seen: list[tuple[str, Any]] = []
    async with client.stream("GET", "/queue/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async with aclosing(sse_events(response)) as events:
            kind, hello = await events.__anext__()
            assert kind == "hello"
            assert hello["can_act"] is True
            kind, snapshot = await events.__anext__()
            assert kind == "snapshot"
            assert [j["id"] for j in snapshot["jobs"]] == [before]
            assert snapshot["summary"]["activity"]["finished"] == {"done": 1}
            job_id = await submit(client, "llama3", "during")
            with trio.fail_after(30):
                async for kind, data in events:
                    seen.append((kind, data))
                    if kind == "summary" and data["activity"]["finished"].get("done") == 2:
                        break
    states = [d["state"] for k, d in seen if k == "job" and d["id"] == job_id]
    # the resident model runs without a load: queued, working, done; a stream sends each
    # job once per write, in its latest state, so a quick job may skip a state but never
    # goes back
    assert states[-1] == "done"
    assert states == sorted(states, key=["queued", "working", "done"].index)
    assert len(states) == len(set(states))
    assert all(d["id"] != before for k, d in seen if k == "job")


async def test_a_burst_reaches_the_stream_complete_each_job_in_its_latest_state(
    client: httpx.AsyncClient,
) -> None:
    last: dict[str, str] = {}
    async with (
        client.stream("GET", "/queue/events") as response,
        aclosing(sse_events(response)) as events,
    ):
        assert [(await events.__anext__())[0] for _ in range(2)] == ["hello", "snapshot"]
        ids = set()
        async with trio.open_nursery() as nursery:

            async def one(i: int) -> None:
                ids.add(await submit(client, ["llama3", "mistral"][i % 2], f"burst {i}"))

            for i in range(30):
                nursery.start_soon(one, i)
        with trio.fail_after(60):
            async for kind, data in events:
                if kind == "job":
                    assert data["state"] != "queued" or last.get(data["id"]) is None
                    last[data["id"]] = data["state"]
                if set(last) == ids and all(v == "done" for v in last.values()):
                    break
    assert set(last) == ids


async def test_a_purge_sends_open_streams_a_new_snapshot(client: httpx.AsyncClient) -> None:
    done = await submit(client, "llama3", "to purge")
    assert (await client.get(f"/jobs/{done}", params={"wait": 30})).json()["state"] == "done"
    async with (
        client.stream("GET", "/queue/events") as response,
        aclosing(sse_events(response)) as events,
    ):
        assert (await events.__anext__())[0] == "hello"
        kind, snapshot = await events.__anext__()
        assert [j["id"] for j in snapshot["jobs"]] == [done]
        r = await client.delete("/jobs", params={"older_than": 0})
        assert r.json() == {"purged": 1}
        resent = None
        with trio.fail_after(30):
            async for kind, data in events:
                if kind == "snapshot":
                    resent = data
                if kind not in ("snapshot", "summary") or resent is None:
                    continue
                summary = data["summary"] if kind == "snapshot" else data
                if summary["activity"]["finished"] == {}:
                    break  # the headline catches up within its refresh interval
        assert resent is not None
        assert resent["jobs"] == []


async def test_streamed_job_reports_its_tokens_while_it_runs(
    client: httpx.AsyncClient, stub: StubOllama
) -> None:
    # a long answer, paused by the stub once the client has its first token
    stub.configure(tokens=1000, token_delay=0.05)
    first_token = trio.Event()
    job_ids: list[str] = []

    async def stream_chat() -> None:
        async with client.stream("POST", "/api/chat", json=chat("llama3", "x", True)) as r:
            job_ids.append(r.headers["x-foreman-job-id"])
            async for _ in r.aiter_lines():
                stub.hold()
                first_token.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream_chat)
        with trio.fail_after(30):
            await first_token.wait()
        with trio.fail_after(30):
            while True:
                running = (await overview(client))["summary"]["running"]
                if running is not None and (running["tokens"] or 0) >= 1:
                    break
                await trio.sleep(0.01)
        assert running["stream"] is True
        assert running["id"] == job_ids[0]
        r = await client.post(f"/jobs/{job_ids[0]}/cancel")
        assert r.json()["state"] == "cancelled"
        stub.release()
    assert (await overview(client))["summary"]["running"] is None


async def test_embedding_model_shows_as_resident_after_an_embedding_request(
    client: httpx.AsyncClient,
) -> None:
    assert (await overview(client))["summary"]["resident"]["embedding"] is None
    r = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "hi"})
    assert r.status_code == 200, r.text
    embedding = (await overview(client))["summary"]["resident"]["embedding"]
    assert embedding["model"] == "nomic-embed-text:latest"


async def test_ui_page_and_assets_are_open_and_locked_down(client: httpx.AsyncClient) -> None:
    page = await client.get("/ui")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/ui/app.js"' in page.text
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        r = await client.get(f"/ui/{name}")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(kind)
    missing = await client.get("/ui/secrets.txt")
    assert missing.status_code == 404
    assert "error" in missing.json()
    escape = await client.get("/ui/..%2Fapi%2Fdashboard.py")
    # refused before routing (dot segment, encoded slash), so no file is looked up
    assert escape.status_code == 400
    assert "refused" in escape.json()["error"]


async def test_the_api_description_lists_the_dashboard_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in ("/queue", "/queue/events", "/ui"):
        assert "200" in paths[path]["get"]["responses"], path
    assert (await client.get("/queue", params={"limit": 0})).status_code == 400
    assert "400" in paths["/queue"]["get"]["responses"]


# -- with API keys --------------------------------------------------------------------


@pytest.fixture
def keyed_settings(tmp_path: Path, stub: StubOllama) -> Settings:
    keys = tmp_path / "keys"
    keys.write_text(f"ops {ADMIN} admin\nreader {READER} inference\nsvc {SERVICE} jobs\n")
    return Settings(ollama_url=stub.url, db=tmp_path / "foreman.db", port=0, api_keys_file=keys)


@pytest.fixture
async def keyed(nursery: trio.Nursery, keyed_settings: Settings) -> str:
    url: str = await nursery.start(
        functools.partial(run, keyed_settings, key_file_poll=KEY_FILE_POLL)
    )
    return url


def client_for(url: str, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=60)


async def test_dashboard_needs_a_key_but_any_scope_may_watch(keyed: str) -> None:
    async with client_for(keyed, None) as anonymous:
        assert (await anonymous.get("/ui")).status_code == 200
        refused = await anonymous.get("/queue")
        assert refused.status_code == 401
        assert refused.json() == {"error": "missing API key"}
        assert (await anonymous.get("/queue/events")).status_code == 401
    async with client_for(keyed, READER) as reader:
        data = await overview(reader)
        assert data["you"] == {
            "name": "reader",
            "scopes": ["inference"],
            "keys_enabled": True,
            "can_act": False,
        }
    async with client_for(keyed, ADMIN) as admin:
        assert (await overview(admin))["you"]["can_act"] is True


async def test_a_non_admin_key_sees_only_its_own_jobs_and_no_one_elses_details(
    keyed: str, stub: StubOllama
) -> None:
    async with client_for(keyed, SERVICE) as svc, client_for(keyed, ADMIN) as admin:
        stub.hold()
        theirs = await submit(admin, "llama3", "admin's", ref="secret-ref")
        await stub.wait_until(lambda: stub.inflight_inference == 1)
        mine = await submit(svc, "mistral", "mine")
        view = await overview(svc)
        assert [j["id"] for j in view["jobs"]] == [mine]
        running = view["summary"]["running"]
        assert running["state"] == "working"
        assert running["model"] == "llama3:latest"
        assert "id" not in running
        assert "ref" not in running
        assert "owner" not in running
        assert view["summary"]["queued"] == 1
        full = await overview(admin)
        assert [j["id"] for j in full["jobs"]] == [mine, theirs]
        assert full["summary"]["running"]["ref"] == "secret-ref"
        # the stream filters the same way
        async with (
            svc.stream("GET", "/queue/events") as response,
            aclosing(sse_events(response)) as events,
        ):
            assert (await events.__anext__())[0] == "hello"
            kind, snapshot = await events.__anext__()
            assert [j["id"] for j in snapshot["jobs"]] == [mine]
            stub.release()
            with trio.fail_after(30):
                async for kind, data in events:
                    assert kind != "job" or data["id"] == mine
                    if kind == "job" and data["state"] == "done":
                        break


async def test_an_inference_key_cannot_use_the_dashboards_actions(
    keyed: str, stub: StubOllama
) -> None:
    async with client_for(keyed, ADMIN) as admin, client_for(keyed, READER) as reader:
        stub.hold()
        await submit(admin, "llama3", "running")
        await stub.wait_until(lambda: stub.inflight_inference == 1)
        queued = await submit(admin, "llama3", "queued")
        for method, path in (
            ("POST", f"/jobs/{queued}/cancel"),
            ("POST", f"/jobs/{queued}/retry"),
            ("DELETE", "/jobs?older_than=0"),
        ):
            r = await reader.request(method, path)
            assert r.status_code == 403, (method, path, r.text)
            assert "may not call" in r.json()["error"]
        assert (await admin.get(f"/jobs/{queued}")).json()["state"] == "queued"
        r = await admin.post(f"/jobs/{queued}/cancel")
        assert r.status_code == 200
        assert r.json()["state"] == "cancelled"
        stub.release()


async def test_shutdown_ends_dashboard_streams(
    tmp_path: Path, stub: StubOllama, nursery: trio.Nursery
) -> None:
    from foreman.daemon import Control

    control = Control()
    settings = Settings(ollama_url=stub.url, db=tmp_path / "f.db", port=0, shutdown_grace=1)
    url: str = await nursery.start(functools.partial(run, settings, control=control))
    async with (
        client_for(url, None) as client,
        client.stream("GET", "/queue/events") as r,
        aclosing(sse_events(r)) as events,
    ):
        assert (await events.__anext__())[0] == "hello"
        assert (await events.__anext__())[0] == "snapshot"
        control.request_stop()
        with trio.fail_after(30):
            async for _ in events:
                pass


async def test_revoking_a_key_ends_its_open_event_streams(
    keyed: str, keyed_settings: Settings, stub: StubOllama
) -> None:
    """A leaked key taken out of the keys file stops watching at the next event."""
    assert keyed_settings.api_keys_file is not None
    async with client_for(keyed, SERVICE) as svc, client_for(keyed, ADMIN) as admin:
        for path in ("/queue/events", "/jobs/events"):
            async with svc.stream("GET", path) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                keyed_settings.api_keys_file.write_text(f"ops {ADMIN} admin\n")
                with trio.fail_after(30):
                    while (await svc.get("/queue")).status_code != 401:  # noqa: ASYNC110 - the keys file is re-read on a timer
                        await trio.sleep(0.05)
                await submit(admin, "llama3", f"wakes {path}")
                with trio.fail_after(30):
                    async for _ in lines:
                        pass  # the stream ends instead of going on
            # the key comes back for the next route's stream
            await restore_keys(keyed_settings, svc)


async def test_a_revoked_keys_streams_end_at_the_reload_without_waiting_for_an_event(
    keyed: str, keyed_settings: Settings
) -> None:
    """Nothing happens in the queue after the key is taken out: its streams still end,
    within the time the keys file takes to be noticed, not at the next 15 s keep-alive."""
    assert keyed_settings.api_keys_file is not None
    async with client_for(keyed, SERVICE) as svc:
        for path in ("/queue/events", "/jobs/events"):
            async with svc.stream("GET", path) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                await anext(lines)  # the stream has started
                keyed_settings.api_keys_file.write_text(f"ops {ADMIN} admin\n")
                with trio.fail_after(10):
                    async for _ in lines:
                        pass  # the stream ends instead of going on
            await restore_keys(keyed_settings, svc)


async def restore_keys(settings: Settings, svc: httpx.AsyncClient) -> None:
    """Put every key back in the file and wait until foreman has read it."""
    assert settings.api_keys_file is not None
    settings.api_keys_file.write_text(
        f"ops {ADMIN} admin\nsvc {SERVICE} jobs\nreader {READER} inference\n"
    )
    with trio.fail_after(30):
        while (await svc.get("/queue")).status_code != 200:  # noqa: ASYNC110 - the keys file is re-read on a timer
            await trio.sleep(0.05)
