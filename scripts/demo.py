"""`make demo`: two stub Ollamas, foreman in front of both, and a burst that drains by model
on each of them.

Sends an interleaved burst of chats for four models at once (what a few background
services and an agent would do), then shows, live and side by side, what each upstream
runs: each drains one model at a time, and together they load each model about once
instead of once per change of model.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from foreman.testing import foreman_process, stub_process

MODELS = ["llama3", "qwen2.5:7b", "mistral", "phi3"]
BURST = 16
LOAD_DELAY = 1.0
TOKEN_DELAY = 0.05
COLUMN = 30


def changes(models: list[str]) -> int:
    """Loads for requests served in this order by one Ollama with one slot."""
    return sum(1 for i, model in enumerate(models) if i == 0 or model != models[i - 1])


def short(model: str) -> str:
    return model.split(":")[0]


async def send_burst(client: httpx.AsyncClient, order: list[str]) -> None:
    async def one(i: int, model: str) -> None:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"note {i}: give it a title"}],
            "stream": False,
        }
        r = await client.post("/api/chat", json=body)
        if r.status_code != 200:
            print(f"  request {i} ({model}) -> {r.status_code} {r.text[:200]}")

    async with trio.open_nursery() as nursery:
        for i, model in enumerate(order):
            nursery.start_soon(one, i, model)


async def watch(client: httpx.AsyncClient, stubs: list[str], started: float) -> None:
    """Print each load and chat as an upstream starts it, in that upstream's column."""
    seen: list[set[int]] = [set() for _ in stubs]
    while True:
        for column, stub in enumerate(stubs):
            record = (await client.get(f"{stub}/_stub/requests")).json()["requests"]
            for entry in record:
                shown = entry["kind"] == "chat" or (entry["kind"] == "load" and entry["loaded"])
                if not shown or entry["start"] is None or entry["seq"] in seen[column]:
                    continue
                seen[column].add(entry["seq"])
                text = ("load " if entry["kind"] == "load" else "  ") + short(entry["model"])
                cell = " " * (COLUMN * column) + f"{text:{COLUMN}s}"
                print(f"  {time.perf_counter() - started:5.1f}s  {cell}".rstrip(), flush=True)
        await trio.sleep(0.1)


async def demo(url: str, stubs: list[str], order: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=None) as client:
        names = [f"upstream {n}: {stub.removeprefix('http://')}" for n, stub in enumerate(stubs, 1)]
        print(f"  {'':6s} " + "".join(f"{name:{COLUMN}s}" for name in names).rstrip())
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, client, stubs, started)
            await send_burst(client, order)
            await trio.sleep(0.2)  # the watcher's last look
            nursery.cancel_scope.cancel()
        print(f"\nall {len(order)} chats answered in {time.perf_counter() - started:.1f}s")


def stub_loads(stub: str) -> Any:
    return httpx.get(f"{stub}/_stub/state").json()["counters"]["loads"]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="foreman-demo-"))
    flags = ["--load-delay", str(LOAD_DELAY), "--token-delay", str(TOKEN_DELAY)]
    stubs = [stub_process(work / f"stub{n}.log", *flags) for n in (1, 2)]
    urls = [stub.start() for stub in stubs]
    foreman = foreman_process(
        work / "foreman.db", urls[0], work / "foreman.log", "--ollama", urls[1]
    )
    order = [MODELS[i % len(MODELS)] for i in range(BURST)]
    try:
        url = foreman.start()
        print(f"two stub Ollamas, one slot each (each model load takes {LOAD_DELAY:g}s);")
        print(f"foreman at {url} in front of both.")
        print(f"sending {BURST} chats at once: {' '.join(short(m) for m in order)}\n")
        trio.run(demo, url, urls, order)
        loads = [stub_loads(stub) for stub in urls]
        log = foreman.output().decode(errors="replace")
        swaps = [line for line in log.splitlines() if re.search(r"\bswap\b", line)]
        print(f"\nforeman's swap log ({len(swaps)} swaps):")
        for line in swaps:
            print("  " + line.split(": ", 1)[-1])
        round_robin = changes(order[0::2]) + changes(order[1::2])
        print(
            f"\nloads: {' + '.join(map(str, loads))} = {sum(loads)} for {len(MODELS)} models."
            f" The same burst round-robin over the two would cost {round_robin};"
            f" on one Ollama in arrival order, {changes(order)}."
        )
    finally:
        foreman.terminate()
        for stub in stubs:
            stub.terminate()
    print(f"\nlogs and database in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
