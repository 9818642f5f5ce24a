"""`python -m foreman.stub` / `foreman stub`: run a stub Ollama until SIGINT or SIGTERM.

It prints one line, `listening on http://HOST:PORT`, once it accepts connections (with
`--port 0` that line is how a harness learns the port), logs one line per request, and exits 0
on SIGINT/SIGTERM. A bad argument is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

import trio

from .config import DEFAULT_BATCH_SLOWDOWN, StubConfig
from .durations import DurationError, parse_go_duration
from .server import StubOllama

PROG = "foreman stub"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        return value

    return parse


def _factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number, not negative: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {text!r}")
    return value


def _keep_alive(text: str) -> float:
    """Like OLLAMA_KEEP_ALIVE: a Go duration, or a bare number of seconds; negative = forever."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_go_duration(text)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of model names")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Run a deterministic, fault-injectable fake Ollama.",
        epilog="Control API: GET /_stub/state, GET|DELETE /_stub/requests, "
        "POST|DELETE /_stub/faults, POST /_stub/config, GET /_stub/wait, "
        "POST /_stub/hold, POST /_stub/release.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=_port, default=11434, help="port; 0 picks a free one (default 11434)")
    add("--load-delay", type=_seconds, default=0.0, metavar="S", help="seconds per chat load")
    add("--embed-load-delay", type=_seconds, default=0.0, metavar="S", help="per embed load")
    add("--token-delay", type=_seconds, default=0.0, metavar="S", help="seconds per token")
    add(
        "--parallel",
        type=_count(1),
        default=1,
        metavar="N",
        help="requests the loaded chat model serves at once, like OLLAMA_NUM_PARALLEL (1); "
        "a request for another model waits for them to end, then swaps",
    )
    add(
        "--batch-slowdown",
        type=_factor,
        default=DEFAULT_BATCH_SLOWDOWN,
        metavar="K",
        help="with R requests running, a token takes token-delay x (1 + K x (R - 1)) "
        f"(default {DEFAULT_BATCH_SLOWDOWN}: 4 at once give about 3.1x the throughput of 1)",
    )
    add("--embed-delay", type=_seconds, default=0.0, metavar="S", help="per embed request")
    add("--tokens", type=_count(0), default=8, metavar="N", help="tokens per answer (8)")
    add("--embedding-dims", type=_count(1), default=8, metavar="N", help="vector size (8)")
    add("--models", type=_names, metavar="A,B", help="chat models (default: five common ones)")
    add("--embed-models", type=_names, metavar="A,B", help="embedding models (default: two)")
    add("--keep-alive", type=_keep_alive, default=300.0, metavar="D", help="e.g. 5m, 30, -1")
    add("--num-ctx", type=_count(1), default=4096, metavar="N", help="default num_ctx (4096)")
    add("--no-check-host", action="store_true", help="accept any Host header")
    add(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="log level (default info: one line per request)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> StubConfig:
    settings: dict[str, object] = {
        "load_delay": args.load_delay,
        "embed_load_delay": args.embed_load_delay,
        "token_delay": args.token_delay,
        "parallel": args.parallel,
        "batch_slowdown": args.batch_slowdown,
        "embed_delay": args.embed_delay,
        "tokens": args.tokens,
        "embedding_dims": args.embedding_dims,
        "default_keep_alive": args.keep_alive,
        "default_num_ctx": args.num_ctx,
        "check_host": not args.no_check_host,
    }
    if args.models is not None:
        settings["chat_models"] = args.models
    if args.embed_models is not None:
        settings["embed_models"] = args.embed_models
    return StubConfig(**settings)  # type: ignore[arg-type]


async def _run(config: StubConfig, host: str, port: int) -> int:
    stub = StubOllama(config)
    failure: str | None = None
    # Signals are caught before the port is announced, so a harness may stop us at any time.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(functools.partial(stub.serve, host=host, port=port))
            except OSError as exc:
                failure = exc.strerror or str(exc)
            else:
                print(f"listening on {stub.url}", flush=True)
                async for signum in signals:
                    logging.getLogger("foreman.stub").info("stopping on signal %s", signum)
                    break
            nursery.cancel_scope.cancel()
    if failure is not None:
        print(f"{PROG}: error: cannot listen on {host}:{port}: {failure}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return trio.run(_run, config_from_args(args), args.host, args.port)
