"""The routes that bypass the queue, over two upstreams (two stub Ollamas, real sockets).

The fleet's health is what its workers find: an upstream is taken down by making its
stub refuse connections and letting a chat job for a model only it has meet the outage,
and the test waits until that upstream's worker reports it down.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from foreman import daemon
from foreman.config import Settings
from foreman.fleet import Fleet
from foreman.stub import StubConfig, StubOllama
from foreman.upstream_specs import UpstreamSpec
from foreman.worker import Worker

from .conftest import KEY_FILE_POLL, wait_for

# models split between the two: only gpu0 has llama3 and nomic, only gpu1 mistral and
# all-minilm; both have qwen2.5 and bge-m3
GPU0 = StubConfig(
    chat_models=("llama3:latest", "qwen2.5:7b"),
    embed_models=("nomic-embed-text:latest", "bge-m3:latest"),
)
GPU1 = StubConfig(
    chat_models=("mistral:latest", "qwen2.5:7b"),
    embed_models=("all-minilm:latest", "bge-m3:latest"),
)


# a chat model only that upstream lists: a job for it can run nowhere else
ONLY_ON = {"gpu0": "llama3", "gpu1": "mistral"}


class Fixture:
    def __init__(
        self,
        url: str,
        fleet: Fleet,
        stubs: tuple[StubOllama, StubOllama],
        control: daemon.Control,
        nursery: trio.Nursery,
    ) -> None:
        self.url = url
        self.fleet = fleet
        self.gpu0, self.gpu1 = stubs
        self.control = control
        self.nursery = nursery

    def worker(self, name: str) -> Worker:
        (worker,) = [w for w in self.control.workers if w.member.name == name]
        return worker

    async def all_up(self) -> None:
        """Until every worker has found its upstream answering (and read its models)."""
        await wait_for(lambda: all(w.statistics().online for w in self.control.workers))

    async def take_down(self, name: str) -> None:
        """Make upstream `name` refuse connections, and wait until its worker has marked
        it down: a chat for a model only it lists is claimed there and meets the outage
        (the job goes back to the queue and waits for the upstream)."""
        stub = self.gpu0 if name == "gpu0" else self.gpu1
        stub.refuse(None)
        self.nursery.start_soon(self._chat_meanwhile, ONLY_ON[name])
        worker = self.worker(name)
        await wait_for(lambda: not worker.statistics().online)

    async def _chat_meanwhile(self, model: str) -> None:
        """A chat that waits in foreman's queue until the test ends (its answer is none of
        the test's business; the test's end cancels it)."""
        body = {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": False}
        async with httpx.AsyncClient(base_url=self.url, timeout=None) as http:
            with contextlib.suppress(httpx.TransportError):
                await http.post("/api/chat", json=body)

    async def read_tags(self) -> None:
        for member in self.fleet:
            await member.refresh_tags()


@pytest.fixture
async def two(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Fixture, httpx.AsyncClient]]:
    stubs = StubOllama(GPU0), StubOllama(GPU1)
    for stub in stubs:
        await nursery.start(stub.serve)
    built: list[Fleet] = []
    build = daemon.build_fleet

    def keep(settings: Settings, pools: list[daemon.UpstreamPools]) -> Fleet:
        built.append(build(settings, pools))
        return built[-1]

    monkeypatch.setattr(daemon, "build_fleet", keep)
    settings = Settings(
        ollama_url=stubs[0].url,
        db=tmp_path / "foreman.db",
        port=0,
        retry_backoff=0.05,
        upstreams=(
            UpstreamSpec(url=stubs[0].url, name="gpu0"),
            UpstreamSpec(url=stubs[1].url, name="gpu1"),
        ),
    )
    control = daemon.Control()
    url: str = await nursery.start(
        partial(daemon.run, settings, control=control, key_file_poll=KEY_FILE_POLL)
    )
    (fleet,) = built
    fixture = Fixture(url, fleet, stubs, control, nursery)
    await fixture.all_up()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        yield fixture, client


def names(document: dict[str, object], field: str = "models", key: str = "name") -> list[str]:
    entries = document[field]
    assert isinstance(entries, list)
    return [entry[key] for entry in entries]


def paths(stub: StubOllama, path: str) -> int:
    return sum(1 for entry in stub.requests if entry.path == path)


async def test_tags_is_the_union_of_the_healthy_upstreams(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    tags = await client.get("/api/tags")
    assert tags.status_code == 200
    listed = names(tags.json())
    assert sorted(listed) == sorted(
        [
            "llama3:latest",
            "qwen2.5:7b",
            "nomic-embed-text:latest",
            "bge-m3:latest",
            "mistral:latest",
            "all-minilm:latest",
        ]
    )
    # each once, with the details of the first upstream that listed it
    async with httpx.AsyncClient() as direct:
        gpu0_tags = (await direct.get(fx.gpu0.url + "/api/tags")).json()["models"]
    gpu0_qwen = next(m for m in gpu0_tags if m["name"] == "qwen2.5:7b")
    assert next(m for m in tags.json()["models"] if m["name"] == "qwen2.5:7b") == gpu0_qwen
    models = await client.get("/v1/models")
    assert models.status_code == 200
    assert models.json()["object"] == "list"
    assert sorted(names(models.json(), "data", "id")) == sorted(listed)

    await fx.take_down("gpu0")
    only = await client.get("/api/tags")
    assert sorted(names(only.json())) == [
        "all-minilm:latest",
        "bge-m3:latest",
        "mistral:latest",
        "qwen2.5:7b",
    ]


async def test_no_upstream_up_is_a_502_naming_them_in_the_routes_shape(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    await fx.take_down("gpu0")
    await fx.take_down("gpu1")
    for path in ("/api/tags", "/api/ps", "/api/version", "/"):
        answer = await client.get(path)
        assert answer.status_code == 502, path
        assert answer.json() == {"error": "no upstream is up (gpu0, gpu1)"}
    models = await client.get("/v1/models")
    assert models.status_code == 502
    assert models.json()["error"]["message"] == "no upstream is up (gpu0, gpu1)"
    embed = await client.post("/api/embed", json={"model": "bge-m3", "input": "x"})
    assert embed.status_code == 502


async def test_every_upstream_failing_is_a_502_naming_each(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    fx.gpu0.controls.refuse(None)
    fx.gpu1.controls.refuse(None)
    tags = await client.get("/api/tags")
    assert tags.status_code == 502
    message = tags.json()["error"]
    assert message.startswith("no upstream answered /api/tags: gpu0: cannot reach ollama")
    assert "; gpu1: cannot reach ollama" in message


async def test_ps_lists_every_loaded_copy_on_every_healthy_upstream(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    async with httpx.AsyncClient() as direct:
        for stub in (fx.gpu0, fx.gpu1):
            loaded = await direct.post(
                stub.url + "/api/embed", json={"model": "bge-m3", "input": "x"}
            )
            assert loaded.status_code == 200
        chat = {"model": "mistral", "prompt": "x", "stream": False}
        assert (await direct.post(fx.gpu1.url + "/api/generate", json=chat)).is_success
    ps = await client.get("/api/ps")
    assert ps.status_code == 200
    assert sorted(names(ps.json())) == ["bge-m3:latest", "bge-m3:latest", "mistral:latest"]
    await fx.take_down("gpu1")
    assert names((await client.get("/api/ps")).json()) == ["bge-m3:latest"]


async def test_show_asks_an_upstream_that_lists_the_model(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    await fx.read_tags()
    shown = await client.post("/api/show", json={"model": "mistral"})
    assert shown.status_code == 200
    assert paths(fx.gpu1, "/api/show") == 1
    assert paths(fx.gpu0, "/api/show") == 0
    # the older `name` field too
    assert (await client.post("/api/show", json={"name": "all-minilm"})).status_code == 200
    # listed nowhere: the first healthy upstream's own 404 reaches the client
    missing = await client.post("/api/show", json={"model": "phi3"})
    assert missing.status_code == 404
    assert missing.json() == {"error": "model 'phi3' not found"}
    assert paths(fx.gpu0, "/api/show") == 1
    model = await client.get("/v1/models/mistral:latest")
    assert model.status_code == 200
    assert model.json()["id"] == "mistral:latest"


async def test_version_comes_from_the_first_healthy_upstream(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    # each worker probed its own upstream's /api/version at start: counted from here
    probed = paths(fx.gpu0, "/api/version"), paths(fx.gpu1, "/api/version")
    assert (await client.get("/api/version")).status_code == 200
    await client.get("/api/status")
    assert paths(fx.gpu0, "/api/version") == probed[0] + 1
    assert paths(fx.gpu0, "/api/status") == 1
    assert paths(fx.gpu1, "/api/version") == probed[1]
    assert paths(fx.gpu1, "/api/status") == 0
    await fx.take_down("gpu0")
    assert (await client.get("/api/version")).json() == {"version": "0.33.0-stub"}
    assert (await client.get("/")).text == "Ollama is running"
    assert paths(fx.gpu1, "/api/version") == probed[1] + 1
    assert paths(fx.gpu1, "/") == 1


async def test_embeddings_go_where_their_model_is_then_to_the_least_busy(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    await fx.read_tags()
    gpu0, gpu1 = fx.fleet.members
    # only gpu1 lists all-minilm
    assert (await client.post("/api/embed", json={"model": "all-minilm", "input": "x"})).is_success
    assert paths(fx.gpu1, "/api/embed") == 1
    assert "all-minilm:latest" in gpu1.embedding_models
    # both list bge-m3, neither has it loaded: the less busy one
    gpu0.embeddings_in_flight = 1
    answer = await client.post("/v1/embeddings", json={"model": "bge-m3", "input": "x"})
    assert answer.is_success
    assert paths(fx.gpu1, "/v1/embeddings") == 1
    assert gpu0.embeddings_in_flight == 1
    assert gpu1.embeddings_in_flight == 0
    # now loaded on gpu1: it goes there even though gpu1 is the busier one
    gpu0.embeddings_in_flight = 0
    gpu1.running = 1
    assert (
        await client.post("/api/embeddings", json={"model": "bge-m3", "prompt": "x"})
    ).is_success
    assert paths(fx.gpu1, "/api/embeddings") == 1
    # and where it is loaded nowhere, the least busy: gpu0
    assert (
        await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})
    ).is_success
    assert paths(fx.gpu0, "/api/embed") == 1


async def test_an_embedding_whose_upstream_cannot_be_reached_runs_on_another(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    fx.gpu0.controls.refuse(None)
    answer = await client.post("/api/embed", json={"model": "bge-m3", "input": "x"})
    assert answer.status_code == 200
    assert len(answer.json()["embeddings"]) == 1
    assert paths(fx.gpu1, "/api/embed") == 1
    metrics = (await client.get("/metrics")).text
    assert 'foreman_upstream_errors_total{kind="outage"} 1' in metrics
    fx.gpu1.controls.refuse(None)
    failed = await client.post("/v1/embeddings", json={"model": "bge-m3", "input": "x"})
    assert failed.status_code == 502
    # the first choice (where bge-m3 is now loaded) and the retry: both named
    message = failed.json()["error"]["message"]
    assert message.startswith("upstream gpu1: cannot reach ollama")
    assert "; upstream gpu0: cannot reach ollama" in message


async def test_pull_goes_to_every_upstream_in_turn_in_one_stream(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    async with client.stream(
        "POST", "/api/pull", json={"model": "tinyllama"}, headers={"X-Foreman-Upstream-Note": "x"}
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) async for line in answer.aiter_lines() if line.strip()]
    assert [line["status"] for line in lines].count("success") == 2
    assert all("error" not in line for line in lines)
    for stub in (fx.gpu0, fx.gpu1):
        assert paths(stub, "/api/pull") == 1
        assert stub.controls.snapshot()["models"].count("tinyllama:latest") == 1


async def test_pull_to_the_upstream_the_header_names_only(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    answer = await client.post(
        "/api/pull",
        json={"model": "tinyllama", "stream": False},
        headers={"X-Foreman-Upstream": "gpu1"},
    )
    assert answer.status_code == 200
    assert answer.json() == {"status": "success"}
    assert paths(fx.gpu0, "/api/pull") == 0
    (pulled,) = [entry for entry in fx.gpu1.requests if entry.path == "/api/pull"]
    # foreman's own header never reaches Ollama
    assert "x-foreman-upstream" not in dict(pulled.headers)
    unknown = await client.post(
        "/api/pull", json={"model": "tinyllama"}, headers={"X-Foreman-Upstream": "gpu9"}
    )
    assert unknown.status_code == 400
    assert unknown.json() == {
        "error": "X-Foreman-Upstream names no upstream: 'gpu9'; the upstreams are: gpu0, gpu1"
    }


async def test_a_failure_of_one_upstream_is_named_in_band_and_the_others_still_pull(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    fx.gpu0.controls.refuse(None)
    async with client.stream("POST", "/api/pull", json={"model": "tinyllama"}) as answer:
        assert answer.status_code == 200
        lines = [json.loads(line) async for line in answer.aiter_lines() if line.strip()]
    assert lines[0]["error"].startswith("upstream gpu0: cannot reach ollama")
    assert lines[-1] == {"status": "success"}
    assert paths(fx.gpu1, "/api/pull") == 1


async def test_delete_everywhere_names_the_upstream_that_lacked_the_model(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    answer = await client.request("DELETE", "/api/delete", json={"model": "llama3"})
    assert answer.status_code == 404
    assert answer.json() == {"error": "upstream gpu1: model 'llama3' not found"}
    # gpu0 had it, and deleted it
    assert "llama3:latest" not in fx.gpu0.controls.snapshot()["models"]
    both = await client.request("DELETE", "/api/delete", json={"model": "qwen2.5:7b"})
    assert both.status_code == 200
    assert both.content == b""


async def test_ready_while_one_upstream_answers_and_names_the_others(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    fx, client = two
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "reasons": [],
        "upstreams": {"gpu0": "up", "gpu1": "up"},
    }
    fx.gpu0.controls.refuse(None)
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "reasons": ["upstream gpu0 is unreachable"],
        "upstreams": {"gpu0": "down", "gpu1": "up"},
    }
    fx.gpu1.controls.refuse(None)
    down = await client.get("/ready")
    assert down.status_code == 503
    assert down.json()["reasons"] == [
        "upstream gpu0 is unreachable",
        "upstream gpu1 is unreachable",
    ]


async def test_the_openapi_document_names_the_upstream_header_on_the_admin_routes(
    two: tuple[Fixture, httpx.AsyncClient],
) -> None:
    _, client = two
    described = (await client.get("/openapi.json")).json()["paths"]
    admin = [
        ("/api/pull", "post"),
        ("/api/push", "post"),
        ("/api/create", "post"),
        ("/api/copy", "post"),
        ("/api/delete", "delete"),
        ("/api/blobs/{digest}", "head"),
        ("/api/blobs/{digest}", "post"),
    ]
    for path, method in admin:
        parameters = described[path][method]["parameters"]
        assert "X-Foreman-Upstream" in [p["name"] for p in parameters if p["in"] == "header"]
        assert "400" in described[path][method]["responses"]
