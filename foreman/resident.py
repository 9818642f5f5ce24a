"""What one upstream holds, and the calls to Ollama that change it.

A worker's `Resident` knows the chat model its upstream holds (the fleet's `Member` keeps
the key, so every placement reads it) and the route it came by, learns it when the
upstream comes back (`discover`), and swaps it for another (`swap`): first asking
whether Ollama has the next model at all, then unloading the previous one, then loading
the next with foreman's keep_alive.
"""

from __future__ import annotations

import logging

from foreman.fleet import Member
from foreman.jobs import Endpoint, Job
from foreman.residency import normalise_model, split_key
from foreman.retry import FailureKind
from foreman.upstream import Upstream, UpstreamError

log = logging.getLogger("foreman.worker")


class Resident:
    def __init__(self, upstream: Upstream, member: Member) -> None:
        self.upstream = upstream
        self.member = member
        # the route the resident model came by (it is unloaded the same way)
        self.endpoint = Endpoint.GENERATE

    @property
    def key(self) -> str | None:
        """The residency key of the chat model the upstream holds, as far as foreman
        knows (None: none, or unknown)."""
        return self.member.resident

    @key.setter
    def key(self, key: str | None) -> None:
        self.member.resident = key

    async def swap(self, job: Job, keep_alive: str) -> None:
        """Make the job's model the resident one (after `check_known`, when a model is
        resident). Raises UpstreamError when the unload meets an outage or the load
        fails."""
        previous = self.key
        if previous is not None:
            name, _ = split_key(previous)
            try:
                await self.upstream.unload(name, self.endpoint)
            except UpstreamError as err:
                if err.kind is FailureKind.OUTAGE:
                    raise
                log.warning("unloading %s failed (%s); loading anyway", previous, err)
            self.key = None
        _, options = split_key(job.model_key)
        await self.upstream.load(job.model, options, job.endpoint, keep_alive)
        self.key = job.model_key
        self.endpoint = job.endpoint

    async def check_known(self, job: Job) -> None:
        """Raise Ollama's 404 if it does not have the job's model, before the resident
        model is unloaded: one typo must not cost the next real request a full reload.
        /api/show reads the model's files without loading it. Any other failure of the
        check leaves the decision to the load, as if there had been no check."""
        try:
            await self.upstream.show(job.model)
        except UpstreamError as err:
            if err.status == 404:
                raise
            if err.kind is FailureKind.OUTAGE:
                raise
            log.warning("checking %s before the swap failed (%s); swapping anyway", job.model, err)

    async def discover(self) -> None:
        """Learn which chat model the upstream holds from /api/ps (when it comes back),
        skipping models that only embed."""
        try:
            models = await self.upstream.running_models()
        except UpstreamError as err:
            log.warning("cannot read ollama's loaded models (%s)", err)
            return
        for entry in models:
            name = entry.get("name") or entry.get("model")
            if not isinstance(name, str):
                continue
            if await self._is_embedding_model(name):
                continue
            self.key = normalise_model(name)
            log.info("resident chat model at start: %s", self.key)
            return
        self.key = None

    async def _is_embedding_model(self, name: str) -> bool:
        try:
            info = await self.upstream.show(name)
        except UpstreamError:
            return False
        capabilities = info.get("capabilities")
        return (
            isinstance(capabilities, list)
            and "embedding" in capabilities
            and ("completion" not in capabilities)
        )
