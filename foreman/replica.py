"""What a foreman on PostgreSQL runs beside the parts every foreman has: one replica of
several sharing one queue (docs/architecture.md, "Replicas on PostgreSQL").

- a token of its own, naming it in the `waiter` column and in its answers' channel;
- one `PgListener` for both channels it hears (other replicas' job changes, the answers of
  its clients' jobs run elsewhere): one connection keeps the order in which PostgreSQL
  delivered them;
- `RemoteChanges`, `AnswerSender` and `AnswerInbox`;
- the `LeaseKeeper`, which runs the upstreams' workers and the janitor under their leases.

`Replica.run` starts them in the order they need each other: listening first, so nothing
committed after the tally was read goes unheard, the leases last.
"""

from __future__ import annotations

import secrets

import attrs
import trio

from foreman.answer_inbox import AnswerInbox
from foreman.leases import LeaseKeeper
from foreman.remote_answers import AnswerSender, answers_channel
from foreman.replication import JOBS_CHANNEL, RemoteChanges
from foreman.store import PgListener

# bound on sending the answers still queued when the replica stops
FLUSH_SECONDS = 5.0


def new_token() -> str:
    """A replica's token: random, short enough for a channel name."""
    return secrets.token_hex(6)


@attrs.define(eq=False)
class Replica:
    listener: PgListener
    changes: RemoteChanges
    sender: AnswerSender
    inbox: AnswerInbox
    leases: LeaseKeeper

    @classmethod
    def wire(
        cls,
        url: str,
        changes: RemoteChanges,
        sender: AnswerSender,
        inbox: AnswerInbox,
        leases: LeaseKeeper,
    ) -> Replica:
        """The parts on one listener: the job changes' channel and this replica's answers'
        (`sender.token` names it)."""
        listener = PgListener(url, on_resync=changes.resync)
        listener.listen(JOBS_CHANNEL, changes.handle)
        listener.listen(answers_channel(sender.token), inbox.handler)
        return cls(listener, changes, sender, inbox, leases)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.listener.run)
            await nursery.start(self.changes.run)
            # what changed between reading the tally and listening: read it afresh
            self.changes.resync()
            await nursery.start(self.sender.run)
            await nursery.start(self.inbox.run)
            await nursery.start(self.leases.run)
            task_status.started()

    def stop_taking(self) -> None:
        self.leases.stop_taking()

    async def hand_over(self) -> None:
        """The end of a graceful stop, once the workers are quiet: the clients answered
        from elsewhere are told where to collect their answers, the answers this replica's
        workers sent are flushed, and the leases are freed, so the others take this
        replica's upstreams now, not when its session ends."""
        self.inbox.close_all()
        with trio.move_on_after(FLUSH_SECONDS):
            await self.sender.flushed()
        await self.leases.release_all()
