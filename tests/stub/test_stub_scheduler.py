"""The stub's scheduler on trio's MockClock: loads, delays, FIFO order and keep_alive expiry.

No sockets here, so virtual time can jump and the assertions can be exact.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from foreman.stub import StubConfig
from foreman.stub.catalogue import make_model
from foreman.stub.record import Recorder, RequestEntry
from foreman.stub.scheduler import Scheduler
from foreman.stub.slots import RunnerOptions

LLAMA = make_model("llama3", embedding=False)
MISTRAL = make_model("mistral", embedding=False)
NOMIC = make_model("nomic-embed-text", embedding=True)
DEFAULT = RunnerOptions()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def make(config: StubConfig | None = None) -> tuple[Scheduler, Recorder]:
    recorder = Recorder()
    settings = config or StubConfig(load_delay=5.0, embed_load_delay=2.0)
    return Scheduler(recorder, lambda: settings), recorder


def entry(recorder: Recorder, kind: str = "chat") -> RequestEntry:
    return recorder.begin("POST", "/api/chat", kind, None, trio.current_time())


async def test_a_cold_model_pays_the_load_delay_once(clock: trio.testing.MockClock) -> None:
    scheduler, recorder = make()
    first = entry(recorder)
    began = trio.current_time()
    async with scheduler.inference(first, LLAMA, DEFAULT, None):
        assert trio.current_time() - began == pytest.approx(5.0)
    assert first.loaded
    assert first.load_seconds == pytest.approx(5.0)
    second = entry(recorder)
    began = trio.current_time()
    async with scheduler.inference(second, LLAMA, DEFAULT, None):
        assert trio.current_time() == began
    assert not second.loaded
    assert recorder.loads == {"llama3:latest": 1}


async def test_other_runner_options_reload_the_same_model(clock: trio.testing.MockClock) -> None:
    scheduler, recorder = make()
    async with scheduler.inference(entry(recorder), LLAMA, DEFAULT, None):
        pass
    bigger = RunnerOptions(num_ctx=8192)
    reload = entry(recorder)
    async with scheduler.inference(reload, LLAMA, bigger, None):
        pass
    assert reload.loaded
    assert recorder.loads == {"llama3:latest": 2}
    assert [(e.event, e.reason) for e in recorder.slot_events] == [
        ("load", "request"),
        ("unload", "reload"),
        ("load", "request"),
    ]
    assert scheduler.chat.options == bigger


async def test_chat_requests_take_the_runner_in_arrival_order(
    clock: trio.testing.MockClock,
) -> None:
    scheduler, recorder = make(StubConfig())
    order: list[int] = []

    async def one(index: int) -> None:
        async with scheduler.inference(entry(recorder), LLAMA, DEFAULT, None):
            order.append(index)
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(one, index)
            await trio.sleep(0.01)
    assert order == [0, 1, 2, 3]
    assert recorder.max_inflight_inference == 4
    assert recorder.inflight_inference == 0


async def test_embeddings_do_not_wait_for_a_chat(clock: trio.testing.MockClock) -> None:
    scheduler, recorder = make()
    finished: list[str] = []

    async def chat() -> None:
        async with scheduler.inference(entry(recorder), LLAMA, DEFAULT, None):
            await trio.sleep(100)
        finished.append("chat")

    async def embed() -> None:
        async with scheduler.embedding(entry(recorder, "embed"), NOMIC, DEFAULT, None):
            pass
        finished.append("embed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(chat)
        await trio.sleep(6)  # the chat model is loaded and generating
        nursery.start_soon(embed)
    assert finished == ["embed", "chat"]
    assert scheduler.chat.model == LLAMA
    assert scheduler.embed.model == NOMIC


async def test_keep_alive_counts_from_idle_and_expires_lazily(
    clock: trio.testing.MockClock,
) -> None:
    scheduler, recorder = make(StubConfig())
    async with scheduler.inference(entry(recorder), LLAMA, DEFAULT, 10.0):
        await trio.sleep(50)  # busy runners never expire
        scheduler.refresh(trio.current_time())
        assert scheduler.chat.model == LLAMA
    await trio.sleep(9)
    scheduler.refresh(trio.current_time())
    assert scheduler.chat.model == LLAMA
    await trio.sleep(2)
    scheduler.refresh(trio.current_time())
    assert scheduler.chat.model is None
    assert recorder.slot_events[-1].reason == "expired"
    assert recorder.unloads == {"llama3:latest": 1}


async def test_unspecified_keep_alive_keeps_the_runners_and_negative_is_forever(
    clock: trio.testing.MockClock,
) -> None:
    scheduler, recorder = make(StubConfig())
    await scheduler.load(scheduler.chat, entry(recorder, "load"), LLAMA, DEFAULT, math.inf)
    async with scheduler.inference(entry(recorder), LLAMA, DEFAULT, None):
        pass
    assert scheduler.chat.keep_alive == math.inf
    await trio.sleep(10**6)
    scheduler.refresh(trio.current_time())
    assert scheduler.chat.model == LLAMA


async def test_unload_waits_for_the_running_request(clock: trio.testing.MockClock) -> None:
    scheduler, recorder = make(StubConfig())
    async with scheduler.inference(entry(recorder), LLAMA, DEFAULT, None):
        scheduler.unload(LLAMA, entry(recorder, "unload"))
        assert scheduler.chat.model == LLAMA
    scheduler.refresh(trio.current_time())
    assert scheduler.chat.model is None


async def test_a_load_for_another_model_waits_for_the_runner(
    clock: trio.testing.MockClock,
) -> None:
    scheduler, recorder = make()
    loaded_at: list[float] = []

    async def chat() -> None:
        async with scheduler.inference(entry(recorder), LLAMA, DEFAULT, None):
            await trio.sleep(20)

    async def load() -> None:
        await scheduler.load(scheduler.chat, entry(recorder, "load"), MISTRAL, DEFAULT, None)
        loaded_at.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chat)
        await trio.sleep(1)
        nursery.start_soon(load)
    assert loaded_at == [pytest.approx(start + 5 + 20 + 5)]
    assert scheduler.chat.model == MISTRAL


async def test_a_cancelled_load_leaves_the_slot_empty(clock: trio.testing.MockClock) -> None:
    scheduler, recorder = make()
    with trio.move_on_after(1):
        await scheduler.load(scheduler.chat, entry(recorder, "load"), LLAMA, DEFAULT, None)
    assert scheduler.chat.model is None
    assert recorder.slot_events[-1].reason == "aborted"
