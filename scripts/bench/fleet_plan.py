"""The fleet benchmark's arithmetic: the routers foreman is compared with, and the lower
bound of a fleet's makespan. Pure, so that tests pin them down.

- Round-robin (what Olla and OllamaFlow do): request i goes to upstream i mod n.
- Loaded-first (what ollamaMQ and ollama-herd do): a request goes to an upstream that has
  its model loaded, else to the least busy one. The router knows what it sent where, so
  "has its model loaded" is read in the router's favour: the model an upstream holds once
  it has served what was already sent to it (the model of the last request sent there;
  with one slot, Ollama serves in arrival order and keeps the last model loaded). "Least
  busy" is the fewest requests sent there and not yet answered; ties go to the first.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs


@attrs.frozen
class RouteState:
    """What a client-side router knows of one upstream."""

    # the model the upstream holds once it has served what was sent to it; None: nothing yet
    loaded: str | None = None
    # requests sent to it and not yet answered
    in_flight: int = 0


def round_robin(index: int, upstreams: int) -> int:
    """The upstream of the `index`-th request (from 0)."""
    return index % upstreams


def loaded_first(model: str, upstreams: Sequence[RouteState]) -> int:
    """The upstream a loaded-first router sends a request for `model` to."""
    if not upstreams:
        raise ValueError("no upstream to route to")
    holding = [i for i, state in enumerate(upstreams) if state.loaded == model]
    candidates = holding or range(len(upstreams))
    return min(candidates, key=lambda i: (upstreams[i].in_flight, i))


def sent(states: Sequence[RouteState], index: int, model: str) -> tuple[RouteState, ...]:
    """The router's view after sending a request for `model` to upstream `index`."""
    return tuple(
        RouteState(model, state.in_flight + 1) if i == index else state
        for i, state in enumerate(states)
    )


def answered(states: Sequence[RouteState], index: int) -> tuple[RouteState, ...]:
    """The router's view after upstream `index` answered one of its requests."""
    return tuple(
        attrs.evolve(state, in_flight=state.in_flight - 1) if i == index else state
        for i, state in enumerate(states)
    )


@attrs.frozen
class Bound:
    """The lower bound of a fleet's makespan and the terms it is the largest of."""

    loads: int  # the fewest loads any schedule needs
    work_split_s: float  # all the work, loads included, split perfectly over the upstreams
    first_job_s: float  # no job ends before one load and its own generation
    last_arrival_s: float  # nor before it arrives and is generated

    @property
    def makespan_s(self) -> float:
        return max(self.work_split_s, self.first_job_s, self.last_arrival_s)


def lower_bound(
    arrivals: Sequence[float],
    models: Sequence[str],
    generation: float,
    load: float,
    upstreams: int,
) -> Bound:
    """No schedule on `upstreams` one-slot servers can finish the jobs (arrival times,
    models; every job `generation` s, every load `load` s) sooner than this.

    Every distinct model must be loaded somewhere at least once, and every upstream that
    does any work must load something, so at least max(models, min(upstreams, jobs)) loads
    happen. The busy time, jobs times generation plus those loads times the load, cannot be
    split over the upstreams better than evenly. And the last job to arrive still needs its
    generation; any job needs a load first.
    """
    if len(arrivals) != len(models):
        raise ValueError("one arrival time per job")
    if not arrivals:
        return Bound(0, 0.0, 0.0, 0.0)
    if upstreams < 1:
        raise ValueError("at least one upstream")
    jobs = len(arrivals)
    loads = max(len(set(models)), min(upstreams, jobs))
    work = jobs * generation + loads * load
    return Bound(
        loads=loads,
        work_split_s=work / upstreams,
        first_job_s=load + generation,
        last_arrival_s=max(arrivals) + generation,
    )
