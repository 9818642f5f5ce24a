"""What foreman is doing at one moment: the snapshot the dashboard and /metrics read.

Pure, and it imports nothing of foreman's, so the worker that fills `WorkerStatistics`
and the board and metrics that read a `Status` can name these types without importing
each other.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class WorkerStatistics:
    """The worker's own state (see `Worker.statistics`)."""

    # residency key of the chat model Ollama holds, as far as the worker knows
    resident: str | None = None
    # the job the worker holds, and the parts of its answer relayed so far
    running: str | None = None
    tokens: int = 0
    # whether the worker can reach Ollama
    online: bool = False
    # probes of Ollama that failed since start
    failed_probes: int = 0


@attrs.frozen
class Status:
    """The worker's statistics and the two present facts that are not the worker's.

    Whether new jobs are taken (`accepting`) is the queue's: it is the door that closes
    when a shutdown begins, whatever the worker is doing. How many clients wait for an
    answer (`waiters`) is the tickets' (`Tickets` holds one per waiting client). With one
    worker per Ollama server there will still be one queue and one `Tickets`, so the worker does not
    report them: the daemon, which holds all three, assembles a `Status` and hands the
    board and the metrics one callable that reads it (`daemon.status_reader`). Each
    reader takes one snapshot per summary or scrape, so the numbers it shows belong to
    the same moment.
    """

    worker: WorkerStatistics = WorkerStatistics()
    accepting: bool = True
    waiters: int = 0


def idle() -> Status:
    """Before the daemon wires its parts: nothing resident, Ollama not yet reached, and
    jobs taken."""
    return Status()
