"""Acceptance of the fleet over real sockets: chat jobs drained by model on several stub
Ollamas, each upstream's slots filled and never exceeded, each job only where its model
is, and a model that no upstream has answered with Ollama's own 404.

What ran where, and when, is read from the stubs' own records: `chat_occupancy` tells
whether two models ever shared one stub's chat runner and how many requests it ran at
once. The stubs are held while the burst is sent, so every placement is made with the
whole burst in the queue, however fast the machine is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest
import trio

from foreman.config import Settings
from foreman.stub import StubConfig, StubOllama, chat_occupancy, expected_text, normalise_name

from .conftest import job_rows, wait_for

MODELS = ("llama3", "mistral", "phi3", "qwen2.5:7b")
# a little time per load and per token, so that jobs overlap on the runners
PACED = StubConfig(load_delay=0.02, token_delay=0.002)


def chat(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": False}


async def burst(
    client: httpx.AsyncClient,
    bodies: Sequence[dict[str, Any]],
    stubs: Sequence[StubOllama],
    settings: Settings,
    *,
    running: int = 1,
) -> list[httpx.Response]:
    """Send every chat at once with the stubs held; let them go once every job is in the
    queue and `running` requests are on the stubs' runners."""
    answers: list[httpx.Response | None] = [None] * len(bodies)

    async def one(index: int) -> None:
        answers[index] = await client.post("/api/chat", json=bodies[index])

    for stub in stubs:
        stub.hold()
    async with trio.open_nursery() as nursery:
        for index in range(len(bodies)):
            nursery.start_soon(one, index)
        await wait_for(lambda: len(job_rows(settings.db)) == len(bodies))
        await wait_for(lambda: sum(stub.inflight_inference for stub in stubs) >= running)
        for stub in stubs:
            stub.release()
    done = [answer for answer in answers if answer is not None]
    assert len(done) == len(bodies)
    return done


def assert_answered(answers: Sequence[httpx.Response], bodies: Sequence[dict[str, Any]]) -> None:
    for answer, body in zip(answers, bodies, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.json()["message"]["content"] == expected_text("/api/chat", body)


def chat_models(stub: StubOllama) -> set[str]:
    """The models of the chat and load requests that reached `stub` (Ollama's full names)."""
    return {normalise_name(str(entry.model)) for entry in stub.requests_of("chat", "load")}


@pytest.mark.parametrize("fleet_configs", [(PACED, PACED)], ids=["two-stubs"])
async def test_two_upstreams_drain_four_models_with_few_loads_and_one_model_at_a_time(
    fleet_client: httpx.AsyncClient,
    fleet_stubs: tuple[StubOllama, ...],
    fleet_settings: Settings,
) -> None:
    bodies = [chat(MODELS[i % len(MODELS)], f"interleaved {i}") for i in range(24)]
    answers = await burst(fleet_client, bodies, fleet_stubs, fleet_settings, running=2)

    assert_answered(answers, bodies)
    rows = job_rows(fleet_settings.db)
    assert [(row["state"], row["attempts"]) for row in rows] == [("done", 1)] * 24
    # both upstreams worked, as foreman recorded and as the stubs saw it
    assert {row["upstream"] for row in rows} == {"gpu0", "gpu1"}
    assert all(stub.requests_of("chat") for stub in fleet_stubs)
    assert sum(len(stub.requests_of("chat")) for stub in fleet_stubs) == 24
    # drain by model on each upstream: each model loaded once, and at most two more loads
    loads = sum(sum(stub.loads.values()) for stub in fleet_stubs)
    assert len(MODELS) <= loads <= len(MODELS) + 2, [stub.loads for stub in fleet_stubs]
    for stub in fleet_stubs:
        occupancy = chat_occupancy(stub.requests)
        assert occupancy.clashes == ()
        assert occupancy.most_at_once == 1
        # one slot each: foreman never sent a stub a second generation while one ran
        assert stub.max_inflight_inference == 1


def parallel(n: int) -> tuple[StubConfig]:
    return (StubConfig(parallel=n, load_delay=0.02, token_delay=0.002),)


# the acceptance's four slots, and more slots than a single-slot upstream's connections
@pytest.mark.parametrize(
    ("fleet_configs", "slots"), [(parallel(4), 4), (parallel(6), 6)], ids=["four", "six"]
)
async def test_one_upstream_with_n_slots_runs_n_at_a_time_and_never_more(
    fleet_client: httpx.AsyncClient,
    fleet_stubs: tuple[StubOllama, ...],
    fleet_settings: Settings,
    slots: int,
) -> None:
    (stub,) = fleet_stubs
    assert [u.slots for u in fleet_settings.upstreams] == [slots]
    bodies = [chat("llama3", f"same model {i}") for i in range(4 * slots)]
    # held until every slot's request is on the runner: the slots fill before a job ends
    answers = await burst(fleet_client, bodies, fleet_stubs, fleet_settings, running=slots)

    assert_answered(answers, bodies)
    rows = job_rows(fleet_settings.db)
    assert [(row["state"], row["attempts"]) for row in rows] == [("done", 1)] * len(bodies)
    assert stub.loads == {"llama3:latest": 1}
    # foreman never had more requests in flight at the stub than slots, and the runner
    # ran that many at once
    assert stub.max_inflight_inference == slots
    occupancy = chat_occupancy(stub.requests)
    assert occupancy.most_at_once == slots
    assert occupancy.clashes == ()


GPU0 = StubConfig(chat_models=("llama3:latest", "qwen2.5:7b"), load_delay=0.02)
GPU1 = StubConfig(chat_models=("mistral:latest", "phi3:latest"), load_delay=0.02)
WHERE = {"llama3": "gpu0", "qwen2.5:7b": "gpu0", "mistral": "gpu1", "phi3": "gpu1"}


@pytest.mark.parametrize("fleet_configs", [(GPU0, GPU1)], ids=["split-models"])
async def test_each_job_runs_only_where_its_model_is_and_tags_lists_the_union(
    fleet_client: httpx.AsyncClient,
    fleet_stubs: tuple[StubOllama, ...],
    fleet_settings: Settings,
) -> None:
    gpu0, gpu1 = fleet_stubs
    bodies = [chat(MODELS[i % len(MODELS)], f"split {i}") for i in range(16)]
    answers = await burst(fleet_client, bodies, fleet_stubs, fleet_settings, running=2)

    assert_answered(answers, bodies)
    rows = job_rows(fleet_settings.db)
    assert [(row["state"], row["attempts"]) for row in rows] == [("done", 1)] * 16
    for row in rows:
        assert row["upstream"] == WHERE[row["model"]], dict(row)
    # no stub was ever asked to load or run a model it does not have
    assert chat_models(gpu0) == {"llama3:latest", "qwen2.5:7b"}
    assert chat_models(gpu1) == {"mistral:latest", "phi3:latest"}
    assert all(entry.status != 404 for stub in fleet_stubs for entry in stub.requests)

    tags = await fleet_client.get("/api/tags")
    assert tags.status_code == 200
    listed = [model["name"] for model in tags.json()["models"]]
    assert sorted(listed) == sorted(
        [
            "llama3:latest",
            "qwen2.5:7b",
            "mistral:latest",
            "phi3:latest",
            # both stubs have the default embedding models: listed once each
            "nomic-embed-text:latest",
            "all-minilm:latest",
        ]
    )


MISSING = "no-such-model"
ROUTES: dict[str, dict[str, Any]] = {
    "/api/chat": {"messages": [{"role": "user", "content": "hi"}], "stream": False},
    "/api/generate": {"prompt": "hi", "stream": False},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
}


@pytest.mark.parametrize("path", list(ROUTES))
@pytest.mark.parametrize("fleet_configs", [(GPU0, GPU1)], ids=["split-models"])
async def test_a_model_no_upstream_has_gets_ollamas_404_and_evicts_nothing(
    fleet_client: httpx.AsyncClient,
    fleet_stubs: tuple[StubOllama, ...],
    fleet_settings: Settings,
    path: str,
) -> None:
    # a model loaded on each upstream first
    for model in ("llama3", "mistral"):
        first = await fleet_client.post(path, json={"model": model, **ROUTES[path]})
        assert first.status_code == 200, first.text
    loads = [dict(stub.loads) for stub in fleet_stubs]

    missing = await fleet_client.post(path, json={"model": MISSING, **ROUTES[path]})

    async with httpx.AsyncClient(base_url=fleet_stubs[0].url) as ollama:
        own = await ollama.post(path, json={"model": MISSING, **ROUTES[path]})
    assert own.status_code == 404
    assert (missing.status_code, missing.json()) == (404, own.json())
    assert missing.headers["x-foreman-job-id"]
    failed = [row for row in job_rows(fleet_settings.db) if row["model"] == MISSING]
    assert [(row["state"], row["attempts"]) for row in failed] == [("failed", 1)]
    # nothing was unloaded or loaded anywhere for it
    assert [dict(stub.loads) for stub in fleet_stubs] == loads
    assert all(stub.requests_of("unload") == [] for stub in fleet_stubs)
    assert [stub.chat_model for stub in fleet_stubs] == ["llama3:latest", "mistral:latest"]
