"""The command line: `foreman serve` runs the daemon, `foreman stub` a fake Ollama."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import trio

from foreman import __version__, jobs_cli
from foreman.config import ConfigError, Settings, add_arguments, resolve
from foreman.store import StoreError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foreman", description="A durable, drain-by-model job queue in front of Ollama."
    )
    parser.add_argument("--version", action="version", version=f"foreman {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the daemon")
    add_arguments(serve)
    commands.add_parser(
        "stub", help="run the stub Ollama (see `foreman stub --help`)", add_help=False
    )
    jobs_cli.add_parser(commands)
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # one line per request is hypercorn's access log, which foreman leaves off
    logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["stub"]:
        from foreman.stub.cli import main as stub_main

        return int(stub_main(args_list[1:]))
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "jobs":
        return jobs_cli.run(args, os.environ)
    try:
        settings = resolve(vars(args), os.environ)
    except ConfigError as exc:
        print(f"foreman: error: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


def serve(settings: Settings) -> int:
    from foreman.daemon import serve_until_signalled

    setup_logging(settings.log_level)
    try:
        trio.run(serve_until_signalled, settings)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        cause = _startup_error(exc)
        if cause is None:
            raise
        print(f"foreman: error: {cause}", file=sys.stderr)
        return 1
    return 0


def _startup_error(exc: BaseException) -> str | None:
    """The one-line reason when foreman could not start (the database, the port)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_error(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, StoreError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot listen: {exc.strerror or exc}"
    return None
