"""Small builders shared by the unit tests."""

from __future__ import annotations

from typing import Any

import attrs

from foreman.jobs import Endpoint, NewJob


@attrs.define
class FakeClock:
    """Wall-clock time as the test says it is."""

    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_job(model_key: str = "m:latest", priority: int = 0, **fields: Any) -> NewJob:
    model = model_key.partition(" ")[0]
    values: dict[str, Any] = {
        "endpoint": Endpoint.CHAT,
        "model": model,
        "model_key": model_key,
        "body": b'{"model":"%s","messages":[]}' % model.encode(),
        "stream": True,
        "priority": priority,
    }
    values.update(fields)
    return NewJob(**values)
