"""What the routes may call, handed to the app at construction: never global.

The ground floor of `api/`: every route module takes its `Services` from here, and this
module imports no route, so the arrows between them run one way.
"""

from __future__ import annotations

import attrs

from foreman.board import Board
from foreman.config import Settings
from foreman.events import StreamSlots
from foreman.fleet import Fleet
from foreman.keys import KeyFile
from foreman.metrics import Metrics
from foreman.queue import JobQueue
from foreman.standing import Standings


@attrs.frozen
class Services:
    settings: Settings
    queue: JobQueue
    keys: KeyFile
    metrics: Metrics
    # the dashboard's view
    board: Board
    # every upstream, as the workers know them, with each one's connection pools for
    # relayed routes and for probes (which a flood of relayed calls cannot take)
    fleet: Fleet
    # where each queued job stands (position, estimated start)
    standings: Standings
    # the open event streams, against the caps in the settings
    streams: StreamSlots = attrs.field(
        default=attrs.Factory(
            lambda self: StreamSlots(self.settings.max_streams, self.settings.max_streams_per_key),
            takes_self=True,
        )
    )
