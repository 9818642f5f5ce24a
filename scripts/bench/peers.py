"""`make bench-peers`: foreman beside LiteLLM's proxy, on the same stub, in one run.

    python -m scripts.bench.peers --litellm .bench-peers/venv/bin/litellm [--quick]

LiteLLM lives in its own virtualenv (`make bench-peers` installs a pinned version there);
this script runs in foreman's. One stub Ollama answers at once; foreman and LiteLLM's
proxy both stand in front of it, and the same client measures, in one run:
- the latency each adds to a non-streamed /v1/chat/completions, in alternating blocks of
  serial requests (direct, through foreman, through LiteLLM);
- the /v1/embeddings rate and p99 with 32 clients, direct and through each.
It writes docs/benchmarks-peers.md and docs/benchmarks-peers.json (`make bench` leaves
them alone; docs/benchmarks.md links to them).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from .common import ROOT, aggregate, machine, ms, percentile, stack
from .loadgen import Connection, HttpError
from .overhead import check
from .report import fig

CHAT_MODEL = "llama3"
EMBED_MODEL = "nomic-embed-text"
BLOCK = 25


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# the chat model as LiteLLM's Ollama provider reaches it (the stub's native /api/chat)
OLLAMA_ALIAS = f"{CHAT_MODEL}-ollama"


def litellm_config(stub_url: str) -> str:
    """LiteLLM's model_list: both models through its OpenAI provider at the stub's /v1 (the
    route foreman relays too), and the chat model once more through its Ollama provider;
    no database, no telemetry."""
    routes = [
        (CHAT_MODEL, f"openai/{CHAT_MODEL}", f"{stub_url}/v1"),
        (EMBED_MODEL, f"openai/{EMBED_MODEL}", f"{stub_url}/v1"),
        (OLLAMA_ALIAS, f"ollama_chat/{CHAT_MODEL}", stub_url),
    ]
    entries = "".join(
        f"  - model_name: {name}\n"
        "    litellm_params:\n"
        f"      model: {model}\n"
        f"      api_base: {base}\n"
        "      api_key: unused\n"
        for name, model, base in routes
    )
    return f"model_list:\n{entries}litellm_settings:\n  telemetry: false\n"


def litellm_version(executable: Path) -> str:
    found = subprocess.run(
        [
            str(executable.with_name("python")),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return found.stdout.strip() or "unknown"


async def _wait_alive(url: str, proc: subprocess.Popen[bytes], limit: float) -> None:
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"LiteLLM's proxy exited with {proc.returncode}")
        conn = Connection(url)
        try:
            if (await conn.send("GET", "/health/liveliness")).status == 200:
                return
        except (HttpError, OSError):
            pass
        finally:
            await conn.aclose()
        await trio.sleep(0.25)
    raise RuntimeError(f"LiteLLM's proxy did not answer within {limit:.0f}s")


@contextmanager
def litellm_proxy(executable: Path, stub_url: str, work: Path) -> Iterator[str]:
    """LiteLLM's proxy in front of the stub, one worker process, stopped when the block
    ends; yields its URL."""
    config = work / "litellm.yaml"
    config.write_text(litellm_config(stub_url))
    port = _free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
    }
    env.pop("DATABASE_URL", None)
    with open(work / "litellm.log", "ab") as out:
        proc = subprocess.Popen(
            [
                str(executable),
                *("--config", str(config), "--host", "127.0.0.1", "--port", str(port)),
                *("--num_workers", "1"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        trio.run(_wait_alive, url, proc, 180.0)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def chat(i: int, model: str = CHAT_MODEL) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": f"peers {i}"}]}
    ).encode()


async def _serial_chat(target: tuple[str, str], count: int, start: int) -> list[float]:
    url, model = target
    conn = Connection(url)
    try:
        out = []
        for i in range(start, start + count):
            answer = check(await conn.send("POST", "/v1/chat/completions", chat(i, model)), url)
            out.append(answer.done - answer.sent)
        return out
    finally:
        await conn.aclose()


async def chat_latency(targets: dict[str, tuple[str, str]], requests: int) -> dict[str, Any]:
    """Serial non-streamed chats from one client, in alternating blocks per target (the
    first is "direct"); each relay's added latency is its percentile less the direct one."""
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for target in targets.values():  # warm up: connections, the model
        await _serial_chat(target, 10, 0)
    for b in range(max(1, requests // BLOCK)):
        for name, target in targets.items():
            samples[name] += await _serial_chat(target, BLOCK, 1000 + b * BLOCK)
    out: dict[str, Any] = {"requests": len(samples["direct"])}
    for q in (50, 99):
        direct = percentile(samples["direct"], q)
        for name in targets:
            out[f"{name}_p{q}_ms"] = ms(percentile(samples[name], q))
            if name != "direct":
                out[f"{name}_added_p{q}_ms"] = ms(percentile(samples[name], q) - direct)
    return out


async def embed_load(url: str, seconds: float, clients: int) -> dict[str, Any]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(c: int) -> None:
        conn = Connection(url)
        i = 0
        try:
            while time.perf_counter() < deadline:
                data = json.dumps({"model": EMBED_MODEL, "input": f"note {c}.{i}"}).encode()
                answer = check(await conn.send("POST", "/v1/embeddings", data), url)
                latencies.append(answer.done - answer.sent)
                i += 1
        finally:
            await conn.aclose()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for c in range(clients):
            nursery.start_soon(client, c)
    elapsed = time.perf_counter() - started
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
    }


def run(executable: Path, quick: bool) -> dict[str, Any]:
    requests = 100 if quick else 400
    seconds = 3.0 if quick else 6.0
    reps = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="foreman-peers-") as tmp:
        work = Path(tmp)
        with (
            stack(work, "peers", ("--tokens", "8")) as s,
            litellm_proxy(executable, s.stub_url, s.work) as litellm,
        ):
            targets = {"direct": s.stub_url, "foreman": s.url, "litellm": litellm}
            chats = {
                **{name: (url, CHAT_MODEL) for name, url in targets.items()},
                "litellm_ollama": (litellm, OLLAMA_ALIAS),
            }
            log(f"/v1/chat/completions, {requests} serial requests per target x{reps}")
            latency = aggregate([trio.run(chat_latency, chats, requests) for _ in range(reps)])
            embeddings: dict[str, Any] = {}
            for url in targets.values():
                trio.run(embed_load, url, 0.5, 4)  # warm up
            for _ in range(reps):
                for name, url in targets.items():
                    log(f"/v1/embeddings, 32 clients for {seconds:g}s: {name}")
                    embeddings.setdefault(name, []).append(trio.run(embed_load, url, seconds, 32))
    embed = {name: aggregate(runs) for name, runs in embeddings.items()}
    direct_rate = embed["direct"]["requests_per_s"]["median"]
    return {
        "machine": machine(),
        "mode": "quick" if quick else "full",
        "litellm": litellm_version(executable),
        "params": {"requests": requests, "seconds": seconds, "clients": 32, "repetitions": reps},
        "chat": latency,
        "chat_ratio_added_p50": latency["litellm_added_p50_ms"]["median"]
        / latency["foreman_added_p50_ms"]["median"],
        "chat_ratio_added_p50_ollama": latency["litellm_ollama_added_p50_ms"]["median"]
        / latency["foreman_added_p50_ms"]["median"],
        "embeddings": embed,
        "embeddings_ratio": {
            name: embed[name]["requests_per_s"]["median"] / direct_rate
            for name in ("foreman", "litellm")
        },
    }


def render(r: dict[str, Any]) -> str:
    m, c, e, p = r["machine"], r["chat"], r["embeddings"], r["params"]
    ratio = r["chat_ratio_added_p50"]
    lines = [
        "# foreman beside other proxies",
        "",
        f"Written by `make bench-peers` on {m['date']} ({m['cpu']}, {m['cores']} cores, load"
        f" average {m['load_average']:.2f} at the start; foreman commit {m.get('commit')})."
        " It installs LiteLLM's proxy"
        f" (`litellm[proxy]=={r['litellm']}`) into a virtualenv of its own, and puts it and"
        " foreman in front of one stub Ollama (`foreman stub`) that answers at once. LiteLLM"
        " reaches the stub's OpenAI-compatible /v1 routes through its OpenAI provider"
        " (`openai/<model>`, `api_base` at the stub), and the chat model once more through"
        " its Ollama provider (`ollama_chat/<model>`), with one worker process, no database"
        " and telemetry off; foreman relays the same /v1 routes. The same minimal client"
        " (`scripts/bench/loadgen.py`) measures all three, side by side in one run."
        " A figure shown as `a (b-c)` is the median `a` of"
        f" {p['repetitions']} repetitions, with their min `b` and max `c`.",
        "",
        "Through foreman a chat is a job: stored in SQLite (on disk before it runs), claimed"
        " by the worker, relayed, its end stored. LiteLLM stores nothing.",
        "",
        "## Added latency, non-streamed /v1/chat/completions",
        "",
        f"Serial requests from one client, {p['requests']} per target per repetition, in"
        f" alternating blocks of {BLOCK}: straight to the stub, through foreman, through"
        " LiteLLM by each provider. Added: the relay's percentile less the direct one.",
        "",
        "|  | p50 ms | added p50 ms | p99 ms | added p99 ms |",
        "|---|---|---|---|---|",
        f"| direct | {fig(c['direct_p50_ms'], 2)} |  | {fig(c['direct_p99_ms'], 2)} |  |",
    ]
    for name, label in (
        ("foreman", "foreman"),
        ("litellm", "LiteLLM proxy, OpenAI provider"),
        ("litellm_ollama", "LiteLLM proxy, Ollama provider"),
    ):
        lines.append(
            f"| {label} | {fig(c[f'{name}_p50_ms'], 2)} | {fig(c[f'{name}_added_p50_ms'], 2)}"
            f" | {fig(c[f'{name}_p99_ms'], 2)} | {fig(c[f'{name}_added_p99_ms'], 2)} |"
        )
    lines += [
        "",
        f"LiteLLM's proxy adds **{ratio:.1f}x** the latency foreman adds at the median"
        f" ({c['litellm_added_p50_ms']['median']:.1f} ms against"
        f" {c['foreman_added_p50_ms']['median']:.1f} ms) through its OpenAI provider, and"
        f" {r['chat_ratio_added_p50_ollama']:.1f}x through its Ollama provider (`ollama_chat/`,"
        " which reaches the stub's native /api/chat and translates the answer).",
        "",
        "## Embeddings, /v1/embeddings",
        "",
        f"{p['clients']} concurrent clients for {p['seconds']:g} s per target and"
        " repetition, with nothing else running (section 3 of"
        " [benchmarks.md](benchmarks.md) measures foreman's /api/embed relay while its chat"
        " queue is busy).",
        "",
        "|  | requests/s | of direct | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("direct", "direct"), ("foreman", "foreman"), ("litellm", "LiteLLM")):
        share = "1.00" if name == "direct" else f"{r['embeddings_ratio'][name]:.2f}"
        x = e[name]
        lines.append(
            f"| {label} | {fig(x['requests_per_s'], 0)} | {share} | {fig(x['p50_ms'])}"
            f" | {fig(x['p99_ms'])} |"
        )
    lines += [
        "",
        f"foreman relays {r['embeddings_ratio']['foreman']:.2f} of the direct rate, LiteLLM"
        f" {r['embeddings_ratio']['litellm']:.2f}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.peers", description=__doc__)
    parser.add_argument("--litellm", type=Path, required=True, help="LiteLLM's executable")
    parser.add_argument("--quick", action="store_true", help="fewer requests, one repetition")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where to write")
    args = parser.parse_args(argv)
    if not args.litellm.exists():
        print(
            f"bench-peers: no LiteLLM at {args.litellm} (make bench-peers installs it)",
            file=sys.stderr,
        )
        return 1
    started = time.perf_counter()
    results = run(args.litellm.absolute(), args.quick)
    results["elapsed_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks-peers.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "benchmarks-peers.md").write_text(render(results))
    c = results["chat"]
    log(
        f"added p50: foreman {c['foreman_added_p50_ms']['median']:.2f} ms, LiteLLM"
        f" {c['litellm_added_p50_ms']['median']:.2f} ms ({results['chat_ratio_added_p50']:.1f}x);"
        f" embeddings of direct: foreman {results['embeddings_ratio']['foreman']:.2f}, LiteLLM"
        f" {results['embeddings_ratio']['litellm']:.2f}: {args.out / 'benchmarks-peers.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
