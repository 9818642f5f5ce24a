"""`parallel` on trio's MockClock: N at once, swaps wait for the running ones, FIFO, batching.

No sockets in most of these, so virtual time can jump and the times asserted are exact; one
test drives the same through HTTP with `hold()`, and the record is checked with
`chat_occupancy`, as a fleet test checks a stub process.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import httpx
import pytest
import trio
import trio.testing

from foreman.stub import StubConfig, StubOllama, chat_occupancy
from foreman.stub.call import Call
from foreman.stub.catalogue import ModelInfo, make_model
from foreman.stub.cli import build_parser, config_from_args, main
from foreman.stub.config import apply_changes
from foreman.stub.record import Recorder, RequestEntry
from foreman.stub.scheduler import Scheduler, batch_factor
from foreman.stub.slots import RunnerOptions
from foreman.stub.state import StubState
from foreman.stub.streams import pace

LLAMA = make_model("llama3", embedding=False)
MISTRAL = make_model("mistral", embedding=False)
DEFAULT = RunnerOptions()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def make(parallel: int) -> tuple[Scheduler, Recorder]:
    recorder = Recorder()
    config = StubConfig(parallel=parallel, load_delay=5.0)
    return Scheduler(recorder, lambda: config), recorder


def entry(recorder: Recorder, model: ModelInfo = LLAMA) -> RequestEntry:
    return recorder.begin("POST", "/api/chat", "chat", model.name, trio.current_time())


async def run(
    scheduler: Scheduler, recorder: Recorder, model: ModelInfo, seconds: float
) -> RequestEntry:
    mine = entry(recorder, model)
    async with scheduler.inference(mine, model, DEFAULT, None):
        await trio.sleep(seconds)
    return mine


async def test_n_run_at_once_and_never_n_plus_one(clock: trio.testing.MockClock) -> None:
    scheduler, recorder = make(parallel=3)
    done: list[RequestEntry] = []

    async def one() -> None:
        done.append(await run(scheduler, recorder, LLAMA, 10))

    async with trio.open_nursery() as nursery:
        for _ in range(7):
            nursery.start_soon(one)
            await trio.sleep(0.01)
    starts = sorted(e.start or 0 for e in done)
    # The first loads; the next two join once it is loaded; the rest wait for room.
    assert starts == [0, 5, 5, 15, 15, 15, 25]
    assert recorder.max_running_inference == 3
    assert recorder.loads == {"llama3:latest": 1}
    occupancy = chat_occupancy(recorder.entries)
    assert occupancy.most_at_once == 3
    assert not occupancy.models_overlapped


async def test_another_model_waits_for_the_running_ones_then_swaps(
    clock: trio.testing.MockClock,
) -> None:
    scheduler, recorder = make(parallel=4)
    entries: dict[str, RequestEntry] = {}

    async def one(name: str, model: ModelInfo, seconds: float) -> None:
        entries[name] = await run(scheduler, recorder, model, seconds)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "short", LLAMA, 10)
        await trio.sleep(0.01)
        nursery.start_soon(one, "long", LLAMA, 20)
        await trio.sleep(1)
        nursery.start_soon(one, "other", MISTRAL, 3)
    assert entries["short"].released == 15
    assert entries["long"].released == 25
    other = entries["other"]
    assert other.start == 25  # not before the last llama3 request let go
    assert other.loaded
    assert other.released == 25 + 5 + 3
    assert [(e.event, e.model, e.at) for e in recorder.slot_events] == [
        ("load", "llama3:latest", 0),
        ("unload", "llama3:latest", 25),
        ("load", "mistral:latest", 25),
    ]
    assert not chat_occupancy(recorder.entries).models_overlapped


async def test_requests_keep_arrival_order_even_behind_a_swap(
    clock: trio.testing.MockClock,
) -> None:
    scheduler, recorder = make(parallel=2)
    finished: list[RequestEntry] = []
    arrivals = [LLAMA, LLAMA, MISTRAL, LLAMA, MISTRAL, MISTRAL]

    async def one(model: ModelInfo) -> None:
        finished.append(await run(scheduler, recorder, model, 10))

    async with trio.open_nursery() as nursery:
        for model in arrivals:
            nursery.start_soon(one, model)
            await trio.sleep(1)
    by_seq = sorted(finished, key=lambda e: e.seq)
    starts = [e.start or 0 for e in by_seq]
    assert starts == sorted(starts)  # nobody overtakes an earlier arrival
    # The fourth (llama3) waits behind the mistral swap although llama3 was loaded with room.
    assert [e.start for e in by_seq] == [0, 5, 15, 30, 45, 50]
    assert sum(recorder.loads.values()) == 4
    occupancy = chat_occupancy(recorder.entries)
    assert occupancy.most_at_once == 2
    assert not occupancy.models_overlapped


async def test_a_waiting_request_that_gives_up_lets_the_next_one_in(
    clock: trio.testing.MockClock,
) -> None:
    scheduler, recorder = make(parallel=2)
    later: list[RequestEntry] = []

    async def impatient() -> None:
        with trio.move_on_after(5):
            await run(scheduler, recorder, MISTRAL, 1)

    async def patient() -> None:
        later.append(await run(scheduler, recorder, LLAMA, 1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, scheduler, recorder, LLAMA, 100)
        await trio.sleep(6)  # llama3 is loaded and running
        nursery.start_soon(impatient)
        await trio.sleep(1)
        nursery.start_soon(patient)
    assert later[0].start == 11  # it joined the running llama3 once mistral gave up
    assert recorder.loads == {"llama3:latest": 1}


async def test_raising_parallel_at_run_time_lets_the_head_of_the_queue_in(
    clock: trio.testing.MockClock,
) -> None:
    state = StubState(StubConfig(load_delay=0))
    scheduler, recorder = state.scheduler, state.recorder
    second: list[RequestEntry] = []

    async def queued() -> None:
        second.append(await run(scheduler, recorder, LLAMA, 1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, scheduler, recorder, LLAMA, 100)
        await trio.sleep(1)
        nursery.start_soon(queued)
        await trio.sleep(9)
        assert not second
        state.configure({"parallel": 2})
    assert second[0].start == 10


async def test_tokens_slow_down_mildly_with_concurrency(clock: trio.testing.MockClock) -> None:
    state = StubState(StubConfig(parallel=4, token_delay=1.0, batch_slowdown=0.1, tokens=10))
    call = cast(Call, SimpleNamespace(state=state))
    ended: list[float] = []

    async def generate(together: int) -> None:
        mine = entry(state.recorder)
        async with state.scheduler.inference(mine, LLAMA, DEFAULT, None):
            with trio.fail_after(60):  # virtual seconds: fails at once if they never meet
                await state.wait_until(lambda: state.scheduler.chat.busy == together)
            for _ in range(10):
                await pace(call)
        ended.append(trio.current_time())

    await generate(1)  # alone: 10 tokens of 1 s
    assert ended == [10]
    ended.clear()
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(generate, 4)
    assert ended == [pytest.approx(10 + 13)] * 4  # four at once: 1.3 s a token
    speedup = (4 * 10 / 13) / (10 / 10)
    assert speedup > 2.5


def test_the_batch_factor() -> None:
    assert batch_factor(0.1, 1) == 1
    assert batch_factor(0.1, 0) == 1
    assert batch_factor(0.1, 4) == pytest.approx(1.3)
    assert batch_factor(0.0, 8) == 1
    assert 4 / batch_factor(StubConfig().batch_slowdown, 4) > 2.5  # the default's promise


async def test_parallel_one_runs_one_at_a_time_at_the_plain_token_delay(
    clock: trio.testing.MockClock,
) -> None:
    state = StubState(StubConfig(token_delay=1.0, batch_slowdown=0.5))
    assert state.config.parallel == 1
    call = cast(Call, SimpleNamespace(state=state))
    ended: list[float] = []

    async def generate() -> None:
        mine = entry(state.recorder)
        async with state.scheduler.inference(mine, LLAMA, DEFAULT, None):
            for _ in range(4):
                await pace(call)
        ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(generate)
    assert ended == [4, 8, 12]
    assert state.recorder.max_running_inference == 1


async def test_parallel_chats_over_http(client: httpx.AsyncClient, stub: StubOllama) -> None:
    stub.configure(parallel=2)
    stub.hold()
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    answers: list[int] = []

    async def ask() -> None:
        answers.append((await client.post("/api/chat", json=body)).status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask)
        with trio.fail_after(5):
            await stub.wait_until(
                lambda: stub.inflight_inference == 3 and stub.counters()["running_inference"] == 2
            )
        stub.release()
    assert answers == [200, 200, 200]
    assert stub.max_running_inference == 2
    occupancy = stub.occupancy()
    assert occupancy.most_at_once == 2
    assert not occupancy.models_overlapped
    record = (await client.get("/_stub/requests")).json()["requests"]
    assert chat_occupancy(record) == occupancy


async def test_parallel_is_a_run_time_setting(client: httpx.AsyncClient) -> None:
    reply = await client.post("/_stub/config", json={"parallel": 3, "batch_slowdown": 0.2})
    assert reply.status_code == 200
    assert reply.json()["parallel"] == 3
    assert reply.json()["batch_slowdown"] == 0.2
    for bad in (0, -1, 1.5, "2", True):
        reply = await client.post("/_stub/config", json={"parallel": bad})
        assert reply.status_code == 400, bad
    assert (await client.get("/_stub/config")).json()["parallel"] == 3


def test_config_rejects_a_bad_parallel() -> None:
    with pytest.raises(ValueError, match="parallel"):
        StubConfig(parallel=0)
    with pytest.raises(ValueError, match="parallel"):
        apply_changes(StubConfig(), {"parallel": -2})
    with pytest.raises(ValueError, match="batch_slowdown"):
        StubConfig(batch_slowdown=-0.1)


@pytest.mark.parametrize(
    "argv",
    [
        ["--parallel", "0"],
        ["--parallel", "-2"],
        ["--parallel", "four"],
        ["--parallel", "1.5"],
        ["--parallel", ""],
        ["--batch-slowdown", "-1"],
        ["--batch-slowdown", "nan"],
        ["--batch-slowdown", "lots"],
    ],
)
def test_a_bad_parallel_is_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"foreman stub: error: argument {argv[0]}:")
    assert captured.out == ""


async def test_a_load_for_another_model_waits_for_every_running_request(
    clock: trio.testing.MockClock,
) -> None:
    scheduler, recorder = make(parallel=2)
    loaded_at: list[float] = []

    async def load() -> None:
        mine = recorder.begin("POST", "/api/generate", "generate", "mistral", 0)
        await scheduler.load(scheduler.chat, mine, MISTRAL, DEFAULT, None)
        loaded_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, scheduler, recorder, LLAMA, 100)
        await trio.sleep(0.01)
        nursery.start_soon(run, scheduler, recorder, LLAMA, 50)
        await trio.sleep(6)
        nursery.start_soon(load)
    assert loaded_at == [5 + 100 + 5]
    assert scheduler.chat.model == MISTRAL
    assert not chat_occupancy(recorder.entries).models_overlapped


def test_the_command_line_sets_parallel_and_the_slowdown() -> None:
    args = build_parser().parse_args(["--parallel", "4", "--batch-slowdown", "0.25"])
    config = config_from_args(args)
    assert (config.parallel, config.batch_slowdown) == (4, 0.25)
    default = config_from_args(build_parser().parse_args([]))
    assert (default.parallel, default.batch_slowdown) == (1, 0.1)
