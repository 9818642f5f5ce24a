"""`make demo`: the stub Ollama, foreman in front of it, and a burst that drains by model.

Sends an interleaved burst of chats for three models at once (what a few background
services and an agent would do), then shows foreman's swap lines and the order in which
the stub ran the requests: one load per model instead of one per request.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import httpx
import trio

from foreman.testing import foreman_process, stub_process

MODELS = ["llama3", "qwen2.5:7b", "mistral"]
BURST = 12
LOAD_DELAY = 1.0


async def send_burst(url: str, stub_url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=None) as client:

        async def one(i: int) -> None:
            model = MODELS[i % len(MODELS)]
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"note {i}: give it a title"}],
                "stream": False,
            }
            r = await client.post("/api/chat", json=body)
            job = r.headers.get("x-foreman-job-id")
            print(f"  request {i:2d} {model:12s} -> {r.status_code} job {job}")

        async with trio.open_nursery() as nursery:
            # the first chat starts alone; the burst arrives while it is generating
            nursery.start_soon(one, 0)
            await client.get(f"{stub_url}/_stub/wait", params={"inflight_inference": 1})
            for i in range(1, BURST):
                nursery.start_soon(one, i)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="foreman-demo-"))
    stub = stub_process(work / "stub.log", "--load-delay", str(LOAD_DELAY), "--token-delay", "0.05")
    stub_url = stub.start()
    foreman = foreman_process(work / "foreman.db", stub_url, work / "foreman.log")
    try:
        url = foreman.start()
        print(f"stub Ollama at {stub_url} (each model load takes {LOAD_DELAY}s)")
        print(f"foreman at {url}; sending {BURST} chats interleaved over {len(MODELS)} models\n")
        trio.run(send_burst, url, stub_url)
        record = httpx.get(f"{stub_url}/_stub/requests").json()
        entries = record["requests"] if isinstance(record, dict) else record
        order = [e["model"] for e in entries if e.get("kind") == "chat"]
        print("\norder in which Ollama (the stub) ran the chats:")
        print("  " + " ".join(m.split(":")[0] for m in order))
        log = foreman.output().decode(errors="replace")
        swaps = [line for line in log.splitlines() if re.search(r"\bswap\b", line)]
        print(f"\nforeman's swap log ({len(swaps)} swaps for {len(MODELS)} models):")
        for line in swaps:
            print("  " + line.split(": ", 1)[-1])
        loads = httpx.get(f"{stub_url}/_stub/state").json()["counters"]["loads"]
        fcfs = 1 + sum(1 for i in range(1, BURST) if MODELS[i % 3] != MODELS[(i - 1) % 3])
        print(f"\nthe stub loaded a model {loads} times; in arrival order it would be {fcfs}.")
    finally:
        foreman.terminate()
        stub.terminate()
    print(f"\nlogs and database in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
