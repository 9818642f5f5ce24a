"""One worker per upstream: it claims jobs for its Ollama server by the placement rule
and runs up to `slots` of them at once.

A worker owns its upstream's chat residency: one residency key at a time, never two
chat models at once, never more than `slots` generations. On a swap (only when nothing
runs there) it first asks Ollama whether it has the next model (a job for a model Ollama
does not have fails with Ollama's 404 and evicts nothing, or goes to an upstream that
has it), then unloads the previous model (so the load never evicts an embedding model
from Ollama's other slot), then loads the next one with foreman's keep_alive, which pins
it while its queue drains. Claims of every worker go through one lock, so each
placement sees the others' residency as it stands (see `policy.place`).

Every attempt is bounded by the job timeout (a hung Ollama cannot hold a slot forever;
running out of time is a transient failure). An upstream that refuses connections, or
stops answering (a job goes silent or loses its connection, and a probe fails), is
marked down: its running jobs go back to the queue with their
attempts refunded, to run elsewhere or once it is back, and it takes no work until a
probe succeeds. `supervise` restarts a worker after an unexpected error without losing
the jobs it held. At shutdown the workers stop claiming, and each job in hand either
finishes or is put back in the queue with its attempt refunded (`stop_claiming`,
`wait_quiet`, `interrupt`).

A write the database cannot take (a full disk: `StoreUnwritable`) is neither a crash nor
the job's fault: the worker keeps what it was about to write and tries again with backoff
(`StoreBackoff`) until the write succeeds, so a finished answer is recorded, not run
again; a claim that cannot be written simply waits.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import attrs
import trio

from foreman.answers import (
    EventStreamResult,
    StreamError,
    StreamResult,
    decode_body,
    is_unload_request,
)
from foreman.config import Settings, default_of
from foreman.events import Wakeup
from foreman.fleet import Fleet, Member
from foreman.jobs import RUNNING_STATES, Job, JobState
from foreman.metrics import Metrics
from foreman.policy import Lane
from foreman.residency import normalise_model, split_key
from foreman.resident import Resident
from foreman.retry import BACKOFF_CAP, FailureKind, backoff_delay
from foreman.status import WorkerStatistics
from foreman.store import Ended, Store, StoreUnwritable
from foreman.store_backoff import StoreBackoff
from foreman.tickets import (
    Chunk,
    Ending,
    Failed,
    HeldTicket,
    Message,
    Reply,
    StreamStart,
    Tickets,
)
from foreman.upstream import (
    Upstream,
    UpstreamError,
    iter_events,
    iter_lines,
    read_body,
    response_headers,
)
from foreman.upstream_specs import UpstreamSpec, default_name

log = logging.getLogger("foreman.worker")

# bound on the shielded put-back of a job interrupted by shutdown
PUT_BACK_SECONDS = 10
# bound on the probe that tells a silent job from a silent upstream
STILL_ANSWERS_SECONDS = 10.0
# the history the placement's measured costs are read from (see `LoadCosts`)
COSTS_WINDOW = 24 * 3600.0
SHUTDOWN_MESSAGE = "foreman is shutting down; job {id} is back in the queue and runs after restart"


@attrs.frozen
class WorkerSettings:
    """What the worker needs of the settings, with the settings table's defaults."""

    keep_alive: str = default_of("keep_alive")
    max_wait: float = default_of("max_wait")
    retry_backoff: float = default_of("retry_backoff")
    retry_cap: float = BACKOFF_CAP
    # a safety net: the worker also looks for work this often if nobody woke it
    idle_poll: float = 30.0
    # in a fleet, an idle upstream is probed this often, so the relayed routes and the
    # placement do not count on one that went away while nothing ran there
    health_check: float = 10.0
    probe_min: float = 0.25
    probe_max: float = 10.0
    # one attempt's limit, load included
    job_timeout: float = default_of("job_timeout")

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerSettings:
        return cls(
            keep_alive=settings.keep_alive,
            max_wait=settings.max_wait,
            retry_backoff=settings.retry_backoff,
            job_timeout=settings.job_timeout,
        )


@attrs.define(eq=False)
class Running:
    """A job the worker holds: its cancel scope, where it stands, who waits for it."""

    job_id: str
    scope: trio.CancelScope
    state: JobState
    ticket: HeldTicket | None = None
    # Ollama's own in-band error line (or event), relayed as it is when the client is
    # streaming
    error_line: bytes | None = None
    # cancelled by a shutdown, not by a client: the job goes back to the queue
    interrupted: bool = False
    # cancelled because its upstream went down while it ran: back to the queue, its
    # attempt refunded, and its client waits for the run elsewhere
    outage: bool = False
    # parts of Ollama's answer relayed so far (one a token, for a streamed answer)
    tokens: int = 0
    # the job is an unload command (read once from its body): nothing to load for it,
    # and no model resident after it
    unload: bool = False
    # the end decided for the job while its write is still waiting (a full disk): the
    # state, the client's last message and the fields (see `Worker._attempt`)
    ending: tuple[JobState, Message | None, dict[str, Any]] | None = None
    # the job claimed for this slot in the same write as this job's end: the slot task
    # runs it next (`Worker._end`)
    following: tuple[Job, Running] | None = None
    # that write found nothing to claim: what it saw, for the loop's next look
    look: Look | None = None


@attrs.frozen
class Look:
    """A look for work that found none, made in the write of a job's end: until anything
    wakes the workers again (`armed` fires), looking again would find none either; the
    earliest job in retry backoff becomes runnable at `retry_at`."""

    armed: trio.Event
    retry_at: float | None


class Worker:
    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        tickets: Tickets,
        wakeup: Wakeup,
        settings: WorkerSettings,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        on_progress: Callable[[], None] | None = None,
        *,
        member: Member | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.tickets = tickets
        self.wakeup = wakeup
        self.settings = settings
        self.rng = rng or random.Random()
        self.metrics = metrics
        # told of every part of a streamed answer (the dashboard's token count)
        self.on_progress = on_progress or (lambda: None)
        # what the fleet knows of this worker's upstream (alone: a fleet of one)
        if member is None:
            url = str(upstream.client.base_url).rstrip("/")
            spec = UpstreamSpec(url=url, name=default_name(url))
            member = Member(spec, relay=upstream, probes=upstream)
        self.member = member
        self.fleet = fleet if fleet is not None else Fleet((member,))
        # set at shutdown: claim nothing more
        self.stopping = False
        # a claim in flight or a job held (`wait_quiet`)
        self._claiming = False
        self._quiet = trio.Event()
        self._quiet.set()
        # what the upstream holds, and the calls that change it
        self.holding = Resident(upstream, member)
        # the jobs in hand, in claim order
        self.jobs: dict[str, Running] = {}
        # probes of Ollama that failed since start (`statistics`)
        self.failed_probes = 0
        # shared by every write the worker waits out, so the log says it once
        self.store_backoff = StoreBackoff()
        # when the upstream last answered (trio time): a probe, or a job's end
        self._heard_at = 0.0
        # the last job's end looked for work and found none (see `Look`)
        self._look: Look | None = None

    # the fleet's view of this upstream, which the placement of every worker reads
    @property
    def resident(self) -> str | None:
        """The residency key of the chat model the upstream holds."""
        return self.holding.key

    @resident.setter
    def resident(self, key: str | None) -> None:
        self.holding.key = key

    @property
    def online(self) -> bool:
        return self.member.online

    @online.setter
    def online(self, value: bool) -> None:
        self.member.online = value

    @property
    def running(self) -> Running | None:
        """The oldest job in hand, if any."""
        return next(iter(self.jobs.values()), None)

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim jobs for this upstream while it has a free slot, each run in a slot task
        of this nursery; a crash of one takes the worker down for `supervise` to mend."""
        async with trio.open_nursery() as slots:
            while True:
                if self.stopping:
                    await trio.sleep_forever()
                if not self.online:
                    await self._until_empty()
                    await self._wait_for_ollama()
                    continue
                armed = self.wakeup.arm()
                look, self._look = self._look, None
                if not self._lane().free:
                    # every slot is taken: a job's end wakes the workers
                    with trio.move_on_after(self.settings.idle_poll):
                        await armed.wait()
                    continue
                if look is not None and look.armed is armed:
                    # the end of the last job looked already, and nothing woke the
                    # workers since: wait as that look says
                    await self._idle(armed, look)
                    continue
                try:
                    claimed = await self._claim()
                except StoreUnwritable as exc:
                    # nothing was claimed: wait for the database, then look again
                    await self.store_backoff.pause(exc, "the worker")
                    continue
                if claimed is None:
                    await self._idle(armed)
                    continue
                slots.start_soon(self._execute, *claimed)

    async def _claim(self) -> tuple[Job, Running] | None:
        """The job the placement rule gives a free slot here, or None; one claim at a
        time across the fleet, so each sees the others' residency as it stands. Raises
        StoreUnwritable when the claim cannot be written (nothing was claimed)."""
        self._set_claiming(True)
        try:
            # outside the lock: a slow model list must not hold up the others' claims
            await self._refresh_knowledge()
            async with self.fleet.claim_lock:
                lane = self._lane()
                if not lane.free or not self.online:
                    return None
                fleet = self.fleet
                others = [fleet.lane(m) for m in fleet if m is not self.member and m.online]
                job = await self.store.claim_on(lane, others, self.settings.max_wait, fleet.costs)
                self.store_backoff.succeeded()
                if job is not None and self.stopping:
                    # shutdown began while the claim was being written: put it back
                    await self.store.transition(
                        job.id, job.state, JobState.QUEUED, attempts_delta=-1
                    )
                    return None
                if job is None:
                    return None
                running = self._hold(job)
                self._occupy(job, running)
                return job, running
        finally:
            self._set_claiming(False)

    def _lane(self) -> Lane:
        return self.fleet.lane(self.member)

    def _occupy(self, job: Job, running: Running) -> None:
        """The claimed job takes a slot; a load makes the upstream count as holding its
        key from now on, so no other placement counts it idle or loads the key a second
        time (`resident` itself changes when the load is done)."""
        self.member.running += 1
        if job.state is JobState.LOADING and not running.unload:
            self.member.loading = True
            self.member.loading_key = job.model_key

    async def _refresh_knowledge(self) -> None:
        """Before a placement in a fleet: this upstream's model list when a minute old,
        and the measured costs of loads and jobs when stale. Alone, an upstream needs
        neither (its own answers decide, as they always did)."""
        if len(self.fleet) < 2:
            return
        if self.member.tags_due(trio.current_time()):
            await self.member.refresh_tags()
        if self.fleet.costs_due(trio.current_time()):
            since = self.store.now() - COSTS_WINDOW
            self.fleet.set_costs(await self.store.measured_costs(since), trio.current_time())

    def _set_claiming(self, claiming: bool) -> None:
        self._claiming = claiming
        self._update_quiet()

    def _update_quiet(self) -> None:
        if self._claiming or self.jobs:
            if self._quiet.is_set():
                self._quiet = trio.Event()
        else:
            self._quiet.set()

    def forget_jobs(self) -> None:
        """After a crash: the jobs this worker held are the store's to put back, and what
        the upstream holds is unknown."""
        self.jobs.clear()
        self._look = None
        self.resident = None
        self.member.running = 0
        self.member.loading = False
        self.member.loading_key = None
        self._update_quiet()

    async def _until_empty(self) -> None:
        """Until every slot task has let its job go (after an outage put them back)."""
        while self.jobs:
            await self._quiet.wait()

    # -- shutdown -------------------------------------------------------------------------

    def statistics(self) -> WorkerStatistics:
        """The worker's state now, frozen: what the dashboard and /metrics show."""
        spec = self.member.spec
        return WorkerStatistics(
            name=spec.name,
            url=spec.url,
            slots=spec.slots,
            resident=self.resident,
            running=tuple(self.jobs),
            tokens=sum(r.tokens for r in self.jobs.values()),
            online=self.online,
            failed_probes=self.failed_probes,
            loading=self.member.loading,
        )

    def stop_claiming(self) -> None:
        """Take no more jobs; the jobs in hand (if any) go on."""
        self.stopping = True
        self.wakeup.notify()

    async def wait_quiet(self) -> None:
        """Until the worker holds no job (returns at once if it holds none)."""
        while self._claiming or self.jobs:
            await self._quiet.wait()

    def interrupt(self) -> bool:
        """Abort the jobs in hand and put them back in the queue (the shutdown's grace ran
        out). False when there were none."""
        for running in self.jobs.values():
            running.interrupted = True
            running.scope.cancel()
        return bool(self.jobs)

    async def _idle(self, armed: trio.Event, look: Look | None = None) -> None:
        delay = self.settings.idle_poll
        next_retry = await self.store.next_not_before() if look is None else look.retry_at
        if next_retry is not None:
            delay = min(delay, max(0.0, next_retry - self.store.now()) + 0.005)
        checking = len(self.fleet) > 1
        if checking:
            delay = min(
                delay, max(0.0, self._heard_at + self.settings.health_check - trio.current_time())
            )
        with trio.move_on_after(delay):
            await armed.wait()
        if checking and not self.jobs and self._due_for_check():
            if await self._still_answers():
                self._heard_at = trio.current_time()
            else:
                log.warning("upstream %s stopped answering while idle", self.member.name)
                self._mark_down(None)

    def _due_for_check(self) -> bool:
        return trio.current_time() - self._heard_at >= self.settings.health_check

    def cancel_running(self, job_id: str) -> bool:
        """Abort the job if this worker runs it (its upstream request closes at once)."""
        running = self.jobs.get(job_id)
        if running is None:
            return False
        running.scope.cancel()
        return True

    # -- one job --------------------------------------------------------------------------

    async def _execute(self, job: Job, running: Running) -> None:
        """One slot's jobs: this one, then each claimed in the write of the previous one's
        end, until an end claims nothing."""
        following: tuple[Job, Running] | None = (job, running)
        while following is not None:
            following = await self._execute_one(*following)

    async def _execute_one(self, job: Job, running: Running) -> tuple[Job, Running] | None:
        """One job, from its claim to its end (or its return to the queue); returns the
        job claimed with its end, if any."""
        done = False
        try:
            with running.scope:
                await self._attempt(job, running)
            if running.scope.cancelled_caught:
                await self._cancelled(job, running)
            done = True
        finally:
            exiting = [(job, running)]
            if not done and running.following is not None:
                # the slot task itself is cancelled: the job claimed with the end never
                # starts here
                exiting.append(running.following)
            for one_job, one in exiting:
                if one.state in RUNNING_STATES and self.stopping:
                    # foreman is exiting at once (a second signal): the job goes back to
                    # the queue, its attempt refunded, before the database closes
                    with trio.move_on_after(PUT_BACK_SECONDS, shield=True):
                        await self._put_back(one_job, one)
                self._let_go(one)
        return running.following

    def _hold(self, job: Job) -> Running:
        """Take the job (and its client's ticket, if it has one, here or on another
        replica) as the running one."""
        ticket = self.tickets.for_job(job)
        log.info(
            "job %s model=%s state=%s attempt=%d/%d",
            job.id,
            job.model,
            job.state.value,
            job.attempts,
            job.max_attempts,
        )
        running = Running(
            job.id,
            trio.CancelScope(),
            job.state,
            ticket,
            unload=_is_unload(job),
        )
        self.jobs[job.id] = running
        self._update_quiet()
        if ticket is not None:
            ticket.take()
        return running

    async def _attempt(self, job: Job, running: Running) -> None:
        """One attempt within the job timeout: the swap if the job needs one, then the
        call. A failure, or running out of time, is judged by `_failed`; an end already
        decided when the time ran out is kept."""
        with trio.move_on_after(self.settings.job_timeout) as limit:
            try:
                if job.state is JobState.LOADING:
                    moved = await self._swap(job, running)
                    if moved is None:
                        return
                    job = moved
                await self._call(job, running)
            except UpstreamError as err:
                await self._failed(job, running, err)
        if running.ending is not None and not running.state.terminal:
            # the end was decided in time (Ollama's answer is in hand) and only its write
            # waited for the database past the timeout: the timeout bounds Ollama, so the
            # same end is written now, and the job does not run again
            new, last, fields = running.ending
            await self._finish(running, new, last, **fields)
            return
        if limit.cancelled_caught and not running.state.terminal:
            timeout = self.settings.job_timeout
            message = f"the attempt ran longer than the job timeout ({timeout:g}s)"
            await self._failed(
                job, running, UpstreamError(FailureKind.TRANSIENT, message, timed_out=True)
            )

    async def _cancelled(self, job: Job, running: Running) -> None:
        """The job's scope was cancelled: by a shutdown (the job goes back to the queue)
        or by the job's own cancellation."""
        if running.state is JobState.LOADING and not running.unload:
            # an aborted load leaves Ollama's slot in an unknown state
            self.resident = None
        if running.interrupted:
            await self._put_back(job, running)
        elif running.outage:
            # its upstream went down under it: not its fault, and it runs again
            await self._move(running, JobState.QUEUED, attempts_delta=-1)
        else:
            log.info("job %s cancelled while %s", job.id, running.state.value)

    def _let_go(self, running: Running) -> None:
        """The worker is done with the job: its slot is free (and every worker may look
        again: a placement depends on every upstream), and its client's ticket closes if
        the job ended."""
        self._heard_at = trio.current_time()
        if self.jobs.pop(running.job_id, None) is not None:
            self.member.running = max(0, self.member.running - 1)
        if not any(r.state is JobState.LOADING for r in self.jobs.values()):
            self.member.loading = False
            self.member.loading_key = None
        self._update_quiet()
        # nothing woke the workers between the end's look for work and now: the loop's
        # next look may rely on it, until the next wake (armed after this one)
        look = running.look
        fresh = look is not None and not look.armed.is_set()
        self.wakeup.notify()
        if fresh:
            assert look is not None
            self._look = attrs.evolve(look, armed=self.wakeup.arm())
        if running.ticket is not None:
            # a job sent back by its upstream's outage runs again: its client waits for it
            aborted = running.scope.cancel_called and not running.outage
            running.ticket.let_go(running.state.terminal or aborted)

    async def _put_back(self, job: Job, running: Running) -> None:
        """A job interrupted by shutdown: back in the queue with its attempt refunded, and
        its client told (without waiting for a slow one)."""
        if running.state not in RUNNING_STATES:
            return
        if running.state is JobState.LOADING and not running.unload:
            self.resident = None
        moved = await self._move(running, JobState.QUEUED, attempts_delta=-1)
        if moved is None or running.ticket is None:
            return
        message = SHUTDOWN_MESSAGE.format(id=job.id)
        running.ticket.offer(Failed(Ending.PUT_BACK, message, job.queue_ms or 0))

    async def _move(self, running: Running, new: JobState, **fields: Any) -> Job | None:
        moved = await self._write_transition(running, new, fields)
        return self._moved(running, new, moved)

    def _moved(self, running: Running, new: JobState, moved: Job | None) -> Job | None:
        """The worker's move as written (None: the job had left its state first)."""
        if moved is None:
            log.info("job %s left %s before the worker moved it", running.job_id, running.state)
            return None
        running.state = new
        log.info(
            "job %s model=%s state=%s attempt=%d/%d%s",
            moved.id,
            moved.model,
            new.value,
            moved.attempts,
            moved.max_attempts,
            f" error={moved.error!r}" if moved.error and new is not JobState.DONE else "",
        )
        return moved

    async def _write_transition(
        self, running: Running, new: JobState, fields: dict[str, Any]
    ) -> Job | None:
        """The worker's move of its job, tried again while the database cannot be
        written: the outcome it carries (an answer Ollama already gave) is kept, not
        thrown away. Once shutdown began there is no waiting: the job stays as the
        database has it, and the next start puts it back in the queue."""
        while True:
            try:
                moved = await self.store.transition(running.job_id, running.state, new, **fields)
            except StoreUnwritable as exc:
                if self.stopping:
                    log.warning(
                        "job %s: %s; left %s for the next start to put back",
                        running.job_id,
                        exc,
                        running.state.value,
                    )
                    return None
                await self.store_backoff.pause(exc, f"job {running.job_id}")
                continue
            self.store_backoff.succeeded()
            return moved

    async def _finish(
        self, running: Running, new: JobState, last: Message | None, **fields: Any
    ) -> None:
        """End the job: commit first, then give the waiting client its last message, so a
        client that has its answer can always read the finished job."""
        running.ending = (new, last, fields)
        moved = await self._end(running, new, fields)
        running.ending = None
        if moved is not None and last is not None and running.ticket is not None:
            await running.ticket.send(last)

    async def _end(self, running: Running, new: JobState, fields: dict[str, Any]) -> Job | None:
        """Write the job's end, and with it (one transaction, one synced commit, one trip
        to the store's thread) the claim of the next job for the slot it frees, under the
        claim lock, when the claim may be made here. Otherwise, or when that write cannot
        be made now (nothing was written), the end alone, waited out like any move."""
        if new is JobState.DONE and self._may_claim_with_end(running):
            async with self.fleet.claim_lock:
                # the placement sees the lane with this job's slot free
                lane = attrs.evolve(self._lane(), running=max(0, self.member.running - 1))
                others = [
                    self.fleet.lane(m) for m in self.fleet if m is not self.member and m.online
                ]
                claim = (lane, others, self.settings.max_wait, self.fleet.costs)
                armed = self.wakeup.arm()
                try:
                    ended = await self.store.end_and_claim(
                        running.job_id, running.state, new, fields, claim
                    )
                except StoreUnwritable:
                    pass  # nothing was written: the end alone waits for the database
                else:
                    self.store_backoff.succeeded()
                    return await self._ended_and_claimed(running, new, ended, armed)
        return await self._move(running, new, **fields)

    def _may_claim_with_end(self, running: Running) -> bool:
        """Whether the end of `running` may claim the next job: the worker claims, its
        upstream answers, and the placement needs no refresh first (`_claim` does it)."""
        if self.stopping or not self.online or running.state is not JobState.WORKING:
            return False
        if len(self.fleet) < 2:
            return True
        now = trio.current_time()
        return not self.member.tags_due(now) and not self.fleet.costs_due(now)

    async def _ended_and_claimed(
        self, running: Running, new: JobState, ended: Ended, armed: trio.Event
    ) -> Job | None:
        """After the end and the claim were written (the claim lock held): the claimed job
        is held at once and runs next in this slot (`Running.following`); when none was
        claimed, what the write saw spares the loop its own look (`Running.look`)."""
        if ended.claim_error is not None:
            log.warning(
                "job %s: the claim made with its end failed (%s); claiming apart",
                running.job_id,
                ended.claim_error,
            )
        moved = self._moved(running, new, ended.moved)
        claimed = ended.claimed
        if claimed is not None and self.stopping:
            # shutdown began while the claim was being written: put it back
            try:
                await self.store.transition(
                    claimed.id, claimed.state, JobState.QUEUED, attempts_delta=-1
                )
            except StoreUnwritable as exc:
                log.warning(
                    "job %s: %s; left %s for the next start to put back",
                    claimed.id,
                    exc,
                    claimed.state.value,
                )
        elif claimed is not None:
            following = self._hold(claimed)
            self._occupy(claimed, following)
            running.following = (claimed, following)
        elif ended.looked:
            running.look = Look(armed, ended.retry_at)
        return moved

    async def _swap(self, job: Job, running: Running) -> Job | None:
        if running.unload:
            # nothing to load for an unload command; it changes residency itself
            return await self._move(running, JobState.WORKING)
        previous = self.resident
        if previous is not None:
            await self.holding.check_known(job)
        waiting_prev = await self.store.count_queued(previous) if previous else 0
        waiting_next = await self.store.count_queued(job.model_key)
        log.info(
            "swap %s -> %s on %s (waiting: %d for %s, %d for %s)",
            previous or "(none)",
            job.model_key,
            self.member.name,
            waiting_prev,
            previous or "(none)",
            waiting_next + 1,
            job.model_key,
        )
        await self.holding.swap(job, self.settings.keep_alive)
        moved = await self._move(running, JobState.WORKING, loaded=True)
        self.member.loading = False
        self.member.loading_key = None
        # the other slots may take the model's jobs now
        self.wakeup.notify()
        return moved

    async def _call(self, job: Job, running: Running) -> None:
        last: Message | None = None
        async with self.upstream.open(
            "POST",
            job.endpoint.value,
            body=job.body,
            headers={"Content-Type": "application/json"},
            # a stream should keep talking; a non-streamed answer says nothing until it
            # is whole, however long that takes (the job timeout bounds it)
            read_timeout=self.upstream.read_timeout if job.stream else None,
            lean=True,
        ) as response:
            headers = response_headers(response.headers)
            queue_ms = job.queue_ms or 0
            content_type = response.headers.get("content-type", "")
            head = StreamStart(response.status_code, headers, b"", queue_ms)
            result: Any
            # closed here, not by the garbage collector, when a stream ends in an error
            if "ndjson" in content_type:
                async with aclosing(iter_lines(response)) as lines:
                    result = await self._forward_stream(
                        lines, StreamResult(job.endpoint), head, running
                    )
            elif "text/event-stream" in content_type:
                async with aclosing(iter_events(response)) as events:
                    answer = EventStreamResult(job.endpoint)
                    result = await self._forward_stream(events, answer, head, running)
            else:
                body = await read_body(response)
                result = decode_body(body)
                last = Reply(response.status_code, headers, body, queue_ms)
        if running.unload and normalise_model(job.model) == split_key(self.resident or "")[0]:
            self.resident = None
        await self._finish(running, JobState.DONE, last, result=result, error=None)

    async def _forward_stream(
        self,
        parts: AsyncIterator[bytes],
        answer: StreamResult | EventStreamResult,
        head: StreamStart,
        running: Running,
    ) -> dict[str, Any]:
        """Forward a stream part by part (NDJSON lines or SSE events) as it arrives and
        return the answer put together. The head goes with the first part, so a retry
        stays possible until a byte of the body has been handed to the client; a stream
        that ends before its last part, or says it failed, is a transient failure."""
        ticket = running.ticket
        async for part in parts:
            try:
                answer.add(part)
            except StreamError as err:
                # Ollama's own error line: passed on as it is if the client is already
                # reading the stream
                if ticket is not None and ticket.streamed:
                    running.error_line = part
                raise UpstreamError(FailureKind.TRANSIENT, str(err)) from err
            running.tokens += 1
            self.on_progress()
            if ticket is not None:
                message: Message = (
                    Chunk(part) if ticket.streamed else attrs.evolve(head, first=part)
                )
                if not await ticket.send(message):
                    ticket = None
        if not answer.done:
            end = "data: [DONE]" if isinstance(answer, EventStreamResult) else "final chunk"
            raise UpstreamError(FailureKind.TRANSIENT, f"ollama's stream ended before its {end}")
        return answer.result()

    async def _failed(self, job: Job, running: Running, err: UpstreamError) -> None:
        ticket = running.ticket
        if self.metrics is not None:
            self.metrics.upstream_error(err.metric_kind)
        # in a fleet, a job that went silent or lost its connection asks whether its
        # upstream still answers at all: if not (it hangs, or it was killed), the job is
        # not at fault and runs elsewhere without spending an attempt
        silent = err.timed_out or err.broken
        if silent and len(self.fleet) > 1 and not await self._still_answers():
            err = UpstreamError(FailureKind.OUTAGE, f"{err}, and the upstream stopped answering")
        if err.kind is FailureKind.OUTAGE:
            # Ollama is down: not this job's fault; give the attempt back and wait. The
            # other jobs on this upstream go back too, to run elsewhere or once it is back
            log.warning("job %s: %s", job.id, err)
            self._mark_down(running)
            await self._move(running, JobState.QUEUED, attempts_delta=-1)
            return
        if err.status == 404 and await self._served_elsewhere(job):
            log.info(
                "job %s: upstream %s does not have %s; it runs where the model is",
                job.id,
                self.member.name,
                job.model,
            )
            if running.state is JobState.LOADING:
                self.resident = None
            await self._move(running, JobState.QUEUED, attempts_delta=-1)
            return
        if ticket is not None and ticket.streamed:
            # the client has part of the answer: it cannot be taken back, so no retry
            last = Failed(Ending.FAILED, str(err), line=running.error_line)
            await self._finish(running, JobState.FAILED, last, error=str(err))
            return
        if err.kind is FailureKind.TRANSIENT and job.attempts < job.max_attempts:
            delay = backoff_delay(
                job.attempts, self.settings.retry_backoff, self.settings.retry_cap, self.rng
            )
            log.warning("job %s: %s; retrying in %.1fs", job.id, err, delay)
            if self.metrics is not None:
                self.metrics.retry()
            if running.state is JobState.LOADING:
                self.resident = None
            await self._move(
                running,
                JobState.QUEUED,
                not_before=self.store.now() + delay,
                error=str(err),
            )
            return
        upstream = None
        if err.status is not None and err.body is not None:
            upstream = Reply(err.status, err.headers, err.body)
        failed = Failed(
            Ending.FAILED, str(err), job.queue_ms or 0, upstream=upstream, answered_by=err.route
        )
        await self._finish(running, JobState.FAILED, failed, error=str(err))

    def _mark_down(self, failed: Running | None) -> None:
        """The upstream stopped answering: it takes no work until a probe succeeds, and
        the other jobs running on it go back to the queue (`Running.outage`) as the one
        that `failed` does."""
        self.resident = None
        self.online = False
        for other in self.jobs.values():
            if other is failed:
                continue
            if other.state in RUNNING_STATES and not other.scope.cancel_called:
                other.outage = True
                other.scope.cancel()
        # the others may take this upstream's work now
        self.wakeup.notify()

    async def _still_answers(self) -> bool:
        """Whether the upstream answers a probe at all (after a job went silent on it)."""
        with trio.move_on_after(STILL_ANSWERS_SECONDS):
            try:
                await self.upstream.probe()
                return True
            except UpstreamError:
                return False
        return False

    async def _served_elsewhere(self, job: Job) -> bool:
        """After this upstream said it does not have the job's model: whether another
        healthy upstream lists it (this one's list is read again first, so the placement
        sends the job there and not back here)."""
        if len(self.fleet) < 2:
            return False
        await self.member.refresh_tags()
        if self.member.lists(job.model):
            return False
        return any(m is not self.member for m in self.fleet.listing(job.model))

    # -- Ollama's availability ------------------------------------------------------------

    async def _wait_for_ollama(self) -> None:
        """Probe until Ollama answers, then learn which chat model it holds."""
        delay = self.settings.probe_min
        warned = False
        while True:
            try:
                await self.upstream.probe()
                break
            except UpstreamError as err:
                if not warned:
                    log.warning(
                        "ollama is unreachable (%s); holding the queue until it is back", err
                    )
                    warned = True
                self.online = False
                self.failed_probes += 1
            await trio.sleep(delay)
            delay = min(delay * 2, self.settings.probe_max)
        if warned:
            log.info("ollama is back; resuming the queue")
        if len(self.fleet) > 1:
            await self.member.refresh_tags()
        self._heard_at = trio.current_time()
        self.online = True
        await self.holding.discover()


def _is_unload(job: Job) -> bool:
    return is_unload_request(job.endpoint, _request_object(job.body))


def _request_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
