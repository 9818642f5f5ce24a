"""The command line: `foreman serve` runs the daemon, `foreman stub` a fake Ollama,
`foreman config` prints the effective configuration, `foreman backup` copies the
database while foreman runs, `foreman jobs` talks to the job API, `foreman migrate-db`
copies a SQLite database into PostgreSQL."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from foreman import __version__, jobs_cli, logs, migrate_db
from foreman.config import (
    ConfigError,
    Settings,
    add_arguments,
    render,
    resolve_all,
)
from foreman.keys import KeyFile, KeysError
from foreman.store import StoreError, backup


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foreman", description="A durable, drain-by-model job queue in front of Ollama."
    )
    parser.add_argument("--version", action="version", version=f"foreman {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the daemon")
    add_arguments(serve)
    config = commands.add_parser(
        "config", help="print the effective configuration (as foreman.toml, secrets redacted)"
    )
    add_arguments(config)
    saver = commands.add_parser(
        "backup", help="copy the database to PATH (safe while foreman runs)"
    )
    saver.add_argument("path", metavar="PATH", help="the copy to write (must not exist)")
    add_arguments(saver)
    mover = commands.add_parser(
        "migrate-db",
        help="copy the jobs and swap history of a SQLite database into an empty PostgreSQL one"
        " (stop foreman first)",
    )
    mover.add_argument("source", metavar="SQLITE_PATH", help="the SQLite database to copy")
    mover.add_argument(
        "url", metavar="URL", help="the PostgreSQL database (postgresql://...) to copy into"
    )
    commands.add_parser(
        "stub", help="run the stub Ollama (see `foreman stub --help`)", add_help=False
    )
    jobs_cli.add_parser(commands)
    return parser


def setup_logging(level: str, fmt: str = "text") -> None:
    logs.setup(level, fmt)


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
    if args.command == "migrate-db":
        return migrate_db.run(Path(args.source).expanduser(), args.url)
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "path")}
    try:
        resolved = resolve_all(flags, os.environ)
        if args.command == "config":
            for line in resolved.deprecations:
                print(f"foreman: warning: {line}", file=sys.stderr)
            print(render(resolved.values, resolved.sources), end="")
            return 0
        settings = resolved.settings
        if args.command == "backup":
            source = migrate_db.backup_source(settings.database_url or settings.db)
            backup(source, Path(args.path).expanduser())
            print(f"foreman: backed up {source} to {args.path}")
            return 0
        # a bad keys file stops foreman here, before anything starts, with one line
        KeyFile(settings.api_keys_file).load()
    except (ConfigError, KeysError) as exc:
        print(f"foreman: error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"foreman: error: {exc}", file=sys.stderr)
        return 1
    return serve(settings, resolved.deprecations)


def serve(settings: Settings, deprecations: Sequence[str] = ()) -> int:
    """Run the daemon; `deprecations` (old spellings of renamed settings) are logged once
    as it starts."""
    from foreman.daemon import serve_until_signalled

    setup_logging(settings.log_level, settings.log_format)
    for line in deprecations:
        logging.getLogger("foreman.config").warning(line)
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
    if isinstance(exc, StoreError | KeysError | ConfigError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot listen: {exc.strerror or exc}"
    return None
