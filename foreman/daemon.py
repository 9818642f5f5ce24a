"""The root nursery: wires the store, the worker, the HTTP server and signals together.

The only place foreman starts tasks. Everything runs under `run`'s nursery, so leaving it
(a signal, an error, a test's cancel scope) stops everything, and the database is closed
last, after the last write.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from foreman.api import Services, create_app
from foreman.config import Settings
from foreman.events import JobEvents, Wakeup
from foreman.queue import JobQueue, run_janitor
from foreman.relay import Relay
from foreman.store import Store
from foreman.upstream import Upstream, default_client
from foreman.worker import Worker, WorkerSettings, supervise

log = logging.getLogger("foreman")

# bound on closing the database at exit (it waits for the store's thread to be free)
CLOSE_SECONDS = 30


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # generous: an Ollama client may hold a request open for as long as its job takes
    config.keep_alive_timeout = 75
    config.graceful_timeout = 5
    return config


async def run(settings: Settings, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run foreman until cancelled. Reports the address it listens on to `task_status`."""
    events = JobEvents()
    relay = Relay()
    wakeup = Wakeup()
    store = await Store.open(settings.db, on_change=events.publish)
    try:
        events.subscribe(None, relay.on_job_change)
        for job in await store.recover_interrupted():
            log.warning(
                "job %s model=%s was interrupted by a restart; now %s",
                job.id,
                job.model,
                job.state.value,
            )
        async with default_client(settings.ollama_url) as client:
            upstream = Upstream(client)
            worker = Worker(
                store,
                upstream,
                relay,
                wakeup,
                WorkerSettings(
                    keep_alive=settings.keep_alive,
                    max_wait=settings.max_wait,
                    retry_backoff=settings.retry_backoff,
                ),
            )
            queue = JobQueue(store, relay, wakeup, events, worker.cancel_running)
            app = create_app(Services(settings=settings, queue=queue, upstream=upstream))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(supervise, worker)
                nursery.start_soon(run_janitor, queue, settings.retention)
                binds = await nursery.start(serve, app, hypercorn_config(settings))
                address = binds[0] if binds else f"http://{settings.host}:{settings.port}"
                log.info(
                    "foreman listening on %s, ollama at %s, database %s",
                    address,
                    settings.ollama_url,
                    settings.db,
                )
                task_status.started(address)
    finally:
        with trio.move_on_after(CLOSE_SECONDS, shield=True):
            await store.close()


async def serve_until_signalled(settings: Settings) -> None:
    """`run`, stopped cleanly by SIGINT or SIGTERM."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            nursery.start_soon(run, settings)
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
