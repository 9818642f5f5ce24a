"""Waiting out a database that cannot be written (a full disk), without a traceback."""

from __future__ import annotations

import logging

import trio

from foreman.store import StoreUnwritable

log = logging.getLogger("foreman.worker")


class StoreBackoff:
    """Waiting out a database that cannot be written: 0.25 s doubling to 10 s between
    tries, one warning when writes start failing and one line when they work again."""

    def __init__(self, first: float = 0.25, cap: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self.delay = first
        self.failing = False

    async def pause(self, exc: StoreUnwritable, doing: str) -> None:
        if not self.failing:
            log.warning("%s; %s waits until it can be written", exc, doing)
            self.failing = True
        await trio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)

    def succeeded(self) -> None:
        if self.failing:
            log.info("the database takes writes again; the worker carries on")
        self.failing = False
        self.delay = self.first
