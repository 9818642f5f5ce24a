"""What foreman is doing at one moment: the snapshot the dashboard and /metrics read.

Pure, and it imports nothing of foreman's, so the worker that fills `WorkerStatistics`
and the board and metrics that read a `Status` can name these types without importing
each other.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class WorkerStatistics:
    """One upstream's worker's own state (see `Worker.statistics`)."""

    # the upstream's configured name and URL, and how many jobs it runs at once
    name: str = ""
    url: str = ""
    slots: int = 1
    # residency key of the chat model the upstream holds, as far as the worker knows
    resident: str | None = None
    # the jobs the worker holds (oldest claim first), and the parts of their answers
    # relayed so far, together
    running: tuple[str, ...] = ()
    tokens: int = 0
    # a load is under way (the resident key is the one being loaded)
    loading: bool = False
    # whether the worker can reach Ollama
    online: bool = False
    # probes of Ollama that failed since start
    failed_probes: int = 0


@attrs.frozen
class LeaseStatus:
    """What a replica on PostgreSQL holds: the upstreams it drives, and the janitor."""

    upstreams: tuple[str, ...] = ()
    janitor: bool = False


@attrs.frozen
class Status:
    """Every upstream worker's statistics and the two present facts that are no worker's.

    Whether new jobs are taken (`accepting`) is the queue's: it is the door that closes
    when a shutdown begins, whatever the workers are doing. How many clients wait for an
    answer (`waiters`) is the tickets' (`Tickets` holds one per waiting client). There is
    one queue and one `Tickets` for every upstream, so no worker reports them: the
    daemon, which holds all three, assembles a `Status` and hands the board and the
    metrics one callable that reads it (`daemon.status_reader`). Each reader takes one
    snapshot per summary or scrape, so the numbers it shows belong to the same moment.
    """

    # one per upstream, in configuration order
    upstreams: tuple[WorkerStatistics, ...] = ()
    accepting: bool = True
    waiters: int = 0
    # replicas on PostgreSQL: this replica's leases (None: one foreman on SQLite)
    leases: LeaseStatus | None = None

    @property
    def worker(self) -> WorkerStatistics:
        """The first upstream's statistics (the only one with a single upstream)."""
        return self.upstreams[0] if self.upstreams else WorkerStatistics()

    @property
    def online(self) -> bool:
        """Whether any upstream can be reached."""
        return any(u.online for u in self.upstreams)


def idle() -> Status:
    """Before the daemon wires its parts: nothing resident, Ollama not yet reached, and
    jobs taken."""
    return Status()
