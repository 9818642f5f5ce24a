"""The root nursery: wires the store, the workers, the HTTP server and signals together.

The only place foreman starts tasks. Everything runs under `run`'s nursery, so leaving it
(a second signal, an error, a test's cancel scope) stops everything, and the database is
closed last, after the last write. A graceful stop (`Control.request_stop`, the first
SIGTERM or SIGINT) drains first: see `drain`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import attrs
import httpx
import trio

from foreman.api import Services, create_app
from foreman.api.access import AccessLog
from foreman.board import Board
from foreman.config import Settings, mask_password
from foreman.connections import AcceptFailureThrottle, connection_cap, raise_open_file_limit
from foreman.events import JobEvents, Wakeup
from foreman.fleet import Fleet, Member
from foreman.keys import KEY_FILE_POLL, KeyFile, watch_key_file
from foreman.leases import LEASE_POLL, LeaseKeeper, sweep_orphans
from foreman.metrics import JobTally, Metrics
from foreman.queue import JobQueue, run_janitor
from foreman.relay_client import RelayPool
from foreman.serving import ServerConfig, serve  # hypercorn's, with its connections mended
from foreman.standing import Standings
from foreman.status import LeaseStatus, Status
from foreman.store import Store
from foreman.supervisor import supervise, take_over
from foreman.tickets import Tickets
from foreman.upstream import (
    LEAN_RELAY_CONNECTIONS,
    PROBE_CONNECTIONS,
    RELAY_CONNECTIONS,
    Upstream,
    default_client,
    upstream_connections,
    worker_connections,
)
from foreman.upstream_specs import UpstreamSpec
from foreman.worker import Worker, WorkerSettings

if TYPE_CHECKING:
    from foreman.replica import Replica

log = logging.getLogger("foreman")

LISTEN_BACKLOG = 1024
# bound on closing the database at exit (it waits for the store's thread to be free)
CLOSE_SECONDS = 30


def hypercorn_config(settings: Settings) -> ServerConfig:
    """`settings.max_connections` must be resolved (see `with_connection_cap`)."""
    assert settings.max_connections is not None
    config = ServerConfig(settings.max_connections, settings.header_timeout)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # generous: an Ollama client may hold a request open for as long as its job takes
    config.keep_alive_timeout = 75
    config.graceful_timeout = 5
    # connections waiting to be accepted (the kernel may hold fewer: net.core.somaxconn);
    # hypercorn's 100 made a burst of clients see resets
    config.backlog = LISTEN_BACKLOG
    return config


class Control:
    """How signals reach a running daemon: a stop request (graceful), a key reload; and
    the running workers (one per upstream), whose counts (their failed probes) a test over
    sockets waits on
    rather than sleeping."""

    def __init__(self) -> None:
        self.stop_requested = trio.Event()
        self.keys: KeyFile | None = None
        self.workers: tuple[Worker, ...] = ()
        # a replica's leases (None on SQLite), and how often it tries the free ones (tests
        # of failover shorten it rather than wait)
        self.leases: LeaseKeeper | None = None
        self.lease_poll = LEASE_POLL

    @property
    def worker(self) -> Worker | None:
        """The first upstream's worker (the only one with a single upstream)."""
        return self.workers[0] if self.workers else None

    def request_stop(self) -> None:
        self.stop_requested.set()

    def reload_keys(self) -> None:
        if self.keys is None or self.keys.path is None:
            log.info("SIGHUP: no keys file to reload")
            return
        self.keys.reload()


def load_keys(settings: Settings) -> KeyFile:
    """The keys in force at start (raises KeysError: a bad file stops foreman), with the
    loud warning when nothing guards a non-loopback address."""
    keys = KeyFile(settings.api_keys_file)
    keys.load()
    if keys.ring.enabled:
        log.info("API keys loaded from %s: %s", keys.path, ", ".join(keys.ring.names()))
    elif not settings.listen_is_loopback:
        log.warning(
            "NO API KEYS: foreman listens on %s and lets ANYONE who reaches it run models, "
            "pull and delete them; set FOREMAN_API_KEYS_FILE",
            settings.host,
        )
    return keys


def with_connection_cap(settings: Settings) -> Settings:
    """The settings with the connection cap resolved against the open-file limit, which
    is raised first as far as the hard limit allows; raises ConfigError when the limit
    leaves no room."""
    soft = raise_open_file_limit()
    upstream = sum(upstream_connections(spec.slots) for spec in settings.upstreams)
    cap = connection_cap(settings.max_connections, soft, upstream)
    # said once foreman listens (see run): a start that fails says only why
    log.debug("open-file limit %d; at most %d client connections at once", soft, cap)
    return attrs.evolve(settings, max_connections=cap)


def status_reader(
    workers: Sequence[Worker],
    queue: JobQueue,
    tickets: Tickets,
    leases: Callable[[], LeaseStatus] | None = None,
) -> Callable[[], Status]:
    """How the board and /metrics read the present: every worker's statistics, with whether
    the queue takes jobs, how many clients hold a ticket and, for a replica, its leases
    (see `Status`)."""

    def read() -> Status:
        return Status(
            tuple(w.statistics() for w in workers),
            accepting=queue.accepting,
            waiters=len(tickets),
            leases=leases() if leases is not None else None,
        )

    return read


@attrs.frozen
class Parts:
    """What `run` starts and serves, wired together around the open store."""

    workers: tuple[Worker, ...]
    queue: JobQueue
    tickets: Tickets
    board: Board
    app: AccessLog
    fleet: Fleet
    # replicas on PostgreSQL: what this one runs to share the queue with the others
    replica: Replica | None = None


@attrs.frozen
class UpstreamPools:
    """One upstream's connection pools (see `foreman.upstream`)."""

    spec: UpstreamSpec
    relay: httpx.AsyncClient
    worker: httpx.AsyncClient
    probe: httpx.AsyncClient
    # the relay's hot path (embeddings, read-only routes): plain http upstreams only
    lean: RelayPool | None = None
    # the worker's jobs (chat, generate): plain http upstreams only
    worker_lean: RelayPool | None = None


def build_fleet(settings: Settings, pools: list[UpstreamPools]) -> Fleet:
    return Fleet(
        tuple(
            Member(
                p.spec,
                relay=Upstream(p.relay, settings.read_timeout, lean=p.lean),
                probes=Upstream(p.probe, settings.read_timeout),
            )
            for p in pools
        )
    )


async def _assemble(
    settings: Settings,
    store: Store,
    events: JobEvents,
    keys: KeyFile,
    pools: list[UpstreamPools],
    lease_poll: float = LEASE_POLL,
) -> Parts:
    """foreman's parts, each handed what it reads and whom it tells. The tickets and
    /metrics listen before the jobs a crash left running are put back, so they hear those
    moves; the board starts from the store as it stands after."""
    token = sender = None
    if store.url is not None:
        # imported here: a foreman on SQLite never loads PostgreSQL's driver
        from foreman.remote_answers import AnswerSender
        from foreman.replica import new_token

        token = new_token()
        sender = AnswerSender(store.url, token)
    tickets = Tickets(token, remote=sender.ticket if sender is not None else None)
    wakeup = Wakeup()
    tally = JobTally()
    metrics = Metrics(tally)
    events.subscribe(None, tickets.on_job_change)
    events.subscribe(None, metrics.on_job_change)
    if sender is None:
        # a replica puts back only the jobs of an upstream whose lease it takes
        await _put_back_interrupted(store)
    tally.load(await store.unfinished())
    board = Board(store, settings.max_wait, owners=tally.by_owner, keys=lambda: keys.ring)
    events.subscribe(None, board.on_job_change)
    fleet = build_fleet(settings, pools)
    workers = tuple(
        Worker(
            store,
            Upstream(p.worker, settings.read_timeout, lean=p.worker_lean),
            tickets,
            wakeup,
            WorkerSettings.from_settings(settings),
            metrics=metrics,
            on_progress=board.poke,
            member=member,
            fleet=fleet,
        )
        for p, member in zip(pools, fleet.members, strict=True)
    )

    def cancel_running(job_id: str) -> bool:
        return any(w.cancel_running(job_id) for w in workers)

    queue = JobQueue(
        store,
        tickets,
        wakeup,
        events,
        cancel_running,
        tally=tally,
        max_queue=settings.max_queue,
        on_removed=board.jobs_removed,
        replica=token,
    )
    replica = None
    if sender is not None:
        from foreman.answer_inbox import AnswerInbox
        from foreman.replica import Replica
        from foreman.replication import RemoteChanges

        async def reload() -> None:
            # notifications may have been missed: the counts afresh, the streams start over
            tally.load(await store.unfinished())
            board.jobs_removed()

        inbox = AnswerInbox(tickets, sender.token)
        events.subscribe(None, inbox.on_job_change)
        changes = RemoteChanges(
            store,
            events,
            wakeup,
            cancel_running=cancel_running,
            on_removed=board.jobs_removed,
            reload=reload,
            remote=metrics.remote,
        )
        leases = LeaseKeeper(
            store,
            fleet,
            {w.member.name: partial(take_over, w) for w in workers},
            janitor=partial(_replica_janitor, queue, settings.retention, [m.name for m in fleet]),
            poll=lease_poll,
        )
        replica = Replica.wire(sender.url, changes, sender, inbox, leases)
    metrics.status = board.status = status_reader(
        workers, queue, tickets, replica.leases.status if replica is not None else None
    )
    # a reload may have revoked a key: its open streams end now, not at their next event
    keys.on_reload(events.wake_all)
    keys.on_reload(board.poke)
    standings = Standings(store, fleet, tally, queue.now)
    board.standings = standings
    services = Services(
        settings=settings,
        queue=queue,
        fleet=fleet,
        standings=standings,
        keys=keys,
        metrics=metrics,
        board=board,
    )
    return Parts(workers, queue, tickets, board, AccessLog(create_app(services)), fleet, replica)


async def _replica_janitor(queue: JobQueue, retention: float, upstreams: list[str]) -> None:
    """The janitor of a replica holding the janitor's lease: the usual rounds, and the
    jobs left running on upstreams no replica here drives."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_janitor, queue, retention)
        nursery.start_soon(sweep_orphans, queue.store, upstreams)


def _lean_pool(clients: contextlib.AsyncExitStack, url: str, connections: int) -> RelayPool | None:
    """A lean pool for an upstream at `url`, closed with the other pools; none for https,
    nor for a URL with credentials (user:password@), which httpx sends as Basic auth: the
    httpx pool beside it serves those."""
    if not url.startswith("http://") or httpx.URL(url).userinfo:
        return None
    pool = RelayPool(url, connections)
    clients.callback(pool.close)
    return pool


async def _put_back_interrupted(store: Store) -> None:
    for job in await store.recover_interrupted():
        log.warning(
            "job %s model=%s was interrupted by a restart; now %s",
            job.id,
            job.model,
            job.state.value,
        )


def _listening(settings: Settings, binds: list[str]) -> str:
    """The address foreman listens on, said once it does."""
    address = binds[0] if binds else f"http://{settings.host}:{settings.port}"
    upstreams = ", ".join(
        f"{u.name}={u.url} ({u.slots} slot{'' if u.slots == 1 else 's'})"
        for u in settings.upstreams
    )
    log.info(
        "foreman listening on %s, upstreams %s, database %s, at most %d client connections",
        address,
        upstreams,
        mask_password(settings.database_url) if settings.database_url else settings.db,
        settings.max_connections,
    )
    return address


async def run(
    settings: Settings,
    *,
    control: Control | None = None,
    key_file_poll: float = KEY_FILE_POLL,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run foreman until cancelled, or until `control` asks it to stop (then gracefully).
    Reports the address it listens on to `task_status`. `key_file_poll` is how often the
    keys file is looked at: not a setting (SIGHUP reloads at once), but tests of the
    reload shorten it rather than wait seconds for it."""
    control = control or Control()
    settings = with_connection_cap(settings)
    keys = control.keys = load_keys(settings)
    # accept fails only if the system runs out of files; say so once a minute, not 10/s
    accept_failures = logging.getLogger("trio.serve_listeners")
    throttle = AcceptFailureThrottle()
    events = JobEvents()
    if settings.database_url is not None:
        store = await Store.open_url(settings.database_url, on_change=events.publish)
    else:
        store = await Store.open(settings.db, on_change=events.publish)
    accept_failures.addFilter(throttle)
    try:
        async with contextlib.AsyncExitStack() as clients:
            pools = [
                UpstreamPools(
                    spec,
                    relay=await clients.enter_async_context(
                        default_client(spec.url, RELAY_CONNECTIONS)
                    ),
                    worker=await clients.enter_async_context(
                        default_client(spec.url, worker_connections(spec.slots))
                    ),
                    probe=await clients.enter_async_context(
                        default_client(spec.url, PROBE_CONNECTIONS)
                    ),
                    lean=_lean_pool(clients, spec.url, LEAN_RELAY_CONNECTIONS),
                    worker_lean=_lean_pool(clients, spec.url, worker_connections(spec.slots)),
                )
                for spec in settings.upstreams
            ]
            parts = await _assemble(settings, store, events, keys, pools, control.lease_poll)
            control.workers = parts.workers
            server_stop = trio.Event()
            replica = parts.replica
            control.leases = replica.leases if replica is not None else None
            async with trio.open_nursery() as nursery:
                if replica is not None:
                    await nursery.start(replica.run)
                else:
                    for worker in parts.workers:
                        nursery.start_soon(supervise, worker)
                    nursery.start_soon(run_janitor, parts.queue, settings.retention)
                nursery.start_soon(watch_key_file, keys, key_file_poll)
                async with trio.open_nursery() as server:
                    config = hypercorn_config(settings)
                    binds = await server.start(
                        partial(serve, parts.app, config, shutdown_trigger=server_stop.wait)
                    )
                    task_status.started(_listening(settings, binds))
                    await control.stop_requested.wait()
                    if replica is not None:
                        replica.stop_taking()
                    await drain(
                        parts.workers, parts.queue, parts.tickets, events, settings.shutdown_grace
                    )
                    if replica is not None:
                        await replica.hand_over()
                    parts.board.close_all()
                    server_stop.set()
                log.info("foreman stopped; closing the database")
                nursery.cancel_scope.cancel()
    finally:
        accept_failures.removeFilter(throttle)
        with trio.move_on_after(CLOSE_SECONDS, shield=True):
            await store.close()


async def drain(
    workers: Sequence[Worker], queue: JobQueue, tickets: Tickets, events: JobEvents, grace: float
) -> None:
    """The graceful part of a shutdown: take no new jobs, let the running ones finish
    within `grace` seconds or put them back in the queue, and let every waiting client go
    with a clear answer. Queued jobs stay queued for the next start."""
    queue.accepting = False
    for worker in workers:
        worker.stop_claiming()
    running = [job_id for worker in workers for job_id in worker.jobs]
    if running:
        log.info("shutting down: %s may finish within %gs", _jobs_named(running), grace)
    else:
        log.info("shutting down: no job is running")
    with trio.move_on_after(grace):
        for worker in workers:
            await worker.wait_quiet()
    late = [job_id for worker in workers for job_id in worker.jobs]
    # every worker interrupts its jobs (no short cut after the first)
    interrupted = [worker.interrupt() for worker in workers]
    if any(interrupted):
        log.warning(
            "%s did not finish within %gs; putting it back in the queue",
            _jobs_named(late),
            grace,
        )
        for worker in workers:
            await worker.wait_quiet()
    waiting = tickets.close_waiting(
        "foreman is shutting down; the job stays queued and runs after the restart"
    )
    if waiting:
        log.info("shutting down: %d waiting clients told to come back later", waiting)
    events.close_all()


def _jobs_named(ids: list[str]) -> str:
    return f"job {ids[0]}" if len(ids) == 1 else "jobs " + ", ".join(ids)


async def serve_until_signalled(settings: Settings) -> None:
    """`run`, stopped by signals: the first SIGINT or SIGTERM shuts down gracefully, a
    second one exits at once (queued jobs are in the database either way, and the
    running job is put back first); SIGHUP reloads the API keys."""
    control = Control()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signals, signals, control, nursery.cancel_scope, settings)
            await run(settings, control=control)
            nursery.cancel_scope.cancel()


async def _on_signals(
    signals: AsyncIterator[int],
    control: Control,
    scope: trio.CancelScope,
    settings: Settings,
) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.info("received SIGHUP; reloading the API keys")
            control.reload_keys()
        elif not control.stop_requested.is_set():
            log.info(
                "received %s; shutting down (the running job has %gs to finish; "
                "send it again to exit at once)",
                name,
                settings.shutdown_grace,
            )
            control.request_stop()
        else:
            log.warning("received %s again; exiting now", name)
            scope.cancel()
            return
