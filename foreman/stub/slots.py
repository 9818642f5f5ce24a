"""Runner slots: which model is loaded, with which runner options, until when.

Pure (time is passed in). The stub has one chat slot and one embedding slot; a request whose
(model, runner options) differ from the slot's makes Ollama reload, which is the cost foreman's
scheduling exists to avoid, so the comparison here follows Ollama's `needsReload`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from .catalogue import ModelInfo

_INT_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict")
RUNNER_OPTION_KEYS = (*_INT_OPTIONS, "use_mmap")


class OptionError(ValueError):
    """A runner option of the wrong type; Ollama fails the load with HTTP 500."""


@attrs.frozen
class RunnerOptions:
    """The options fixed when a runner starts; changing any of them means a reload."""

    num_ctx: int = 4096
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int = 0
    num_thread: int = 0
    draft_num_predict: int = 0
    use_mmap: bool | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any], default_num_ctx: int) -> RunnerOptions:
        values: dict[str, Any] = {"num_ctx": default_num_ctx}
        for key in _INT_OPTIONS:
            value = options.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise OptionError(f'option "{key}" must be of type integer')
            if isinstance(value, float) and not value.is_integer():
                raise OptionError(f'option "{key}" must be of type integer')
            values[key] = int(value)
        use_mmap = options.get("use_mmap")
        if use_mmap is not None:
            if not isinstance(use_mmap, bool):
                raise OptionError('option "use_mmap" must be of type boolean')
            values["use_mmap"] = use_mmap
        return cls(**values)

    def compatible(self, loaded: RunnerOptions) -> bool:
        """Whether a runner started with `loaded` can serve a request asking for self.

        num_gpu -1 (automatic) counts as equal to anything, as in Ollama.
        """
        if self.num_gpu != loaded.num_gpu and -1 not in (self.num_gpu, loaded.num_gpu):
            return False
        mine = attrs.evolve(self, num_gpu=0)
        theirs = attrs.evolve(loaded, num_gpu=0)
        return mine == theirs

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class Slot:
    """One runner. `expires_at` (monotonic seconds, inf = never) counts only while idle."""

    name: str
    model: ModelInfo | None = None
    options: RunnerOptions | None = None
    keep_alive: float = 300.0
    busy: int = 0
    expires_at: float = math.inf
    loading: bool = False
    loaded_at: float = 0.0

    def holds(self, model: ModelInfo, options: RunnerOptions | None = None) -> bool:
        """True when this slot can serve `model` (with `options`, when given) without a load."""
        if self.model is None or self.model.name != model.name or self.loading:
            return False
        return options is None or self.options is None or options.compatible(self.options)

    def due(self, now: float) -> bool:
        """Whether an idle model has outlived its keep_alive and must leave the slot."""
        return (
            self.model is not None
            and self.busy == 0
            and not self.loading
            and (self.expires_at <= now)
        )

    def expiry(self, now: float) -> float:
        """When the model will leave: a busy runner's timer has not started yet."""
        return now + self.keep_alive if self.busy or self.loading else self.expires_at

    def occupy(
        self, model: ModelInfo, options: RunnerOptions, keep_alive: float, now: float
    ) -> None:
        self.model, self.options, self.keep_alive = model, options, keep_alive
        self.loaded_at, self.expires_at = now, math.inf

    def clear(self) -> None:
        self.model, self.options, self.loading = None, None, False
        self.expires_at = math.inf

    def idle_from(self, now: float) -> None:
        """Start the keep_alive timer once the last request on the runner has finished."""
        if self.busy == 0:
            self.expires_at = now + self.keep_alive
