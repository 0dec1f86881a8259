"""How many runners each queue wants: the autoscaling signal (a pure function over plain data).

Celery deployments scale workers by ``ceil((queued + running tasks) / max tasks per worker)``. rtx
knows more: what every task reserves in each dimension. Per queue:

* **runner size**: the capacity (slots, cpu, memory) of the queue's live active runners; with
  runners of several sizes, the most common one (ties: the largest). A queue without a live runner
  has no size: it wants one runner as soon as it has demand (the figure then follows from that
  runner's size).
* **demand**: every allocation of the queue that is waiting (``unassigned``) or holds a reservation
  on an *active* runner (``assigned``, ``running``). Work on a draining runner finishes where it is
  and asks for no new runner (a draining runner is one being scaled down).
* **too large**: demand that fits no runner of that size in some dimension. It is reported
  separately and never adds to the figure: more runners of today's size would never run it; a
  bigger runner would.
* **desired runners** = the largest of, over the dimensions the runner size offers (> 0):
  ``ceil(sum of the fitting demand / runner size)``, and the number of fitting requests that take
  more than half the runner in that dimension (no two of them can share a runner). Both are lower
  bounds of what a perfect packing needs, so the figure never asks for a runner that could not be
  used; fragmentation can make the real need a little higher (the allocator then leaves a request
  waiting until the next scale step or a task ends).

With one-slot tasks and no cpu/memory requests this is exactly Celery's formula with
``max tasks per worker`` = the runner's slots.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DIMENSIONS = ("slots", "cpu", "memory_mb")
_EPS = 1e-9  # sums of fractional cores (0.1 * 30) must not round up to one runner too many


@dataclass(frozen=True, slots=True, order=True)
class Shape:
    """An amount in every dimension: a runner's capacity, a request, or a sum of requests."""

    slots: int = 0
    cpu: float = 0.0
    memory_mb: int = 0

    def fits_in(self, size: Shape) -> bool:
        return self.slots <= size.slots and self.cpu <= size.cpu + _EPS and self.memory_mb <= size.memory_mb


@dataclass(frozen=True, slots=True)
class Demand:
    """``count`` allocations of ``queue`` that each reserve ``shape`` (waiting or on an active runner)."""

    queue: str
    shape: Shape
    count: int
    waiting: int = 0  # of those, still unassigned


@dataclass(frozen=True, slots=True)
class RunnerGroup:
    """``count`` live active runners of capacity ``shape`` serving ``queue``."""

    queue: str
    shape: Shape
    count: int


@dataclass(slots=True)
class QueueScale:
    queue: str
    runner_size: Shape | None
    runners: int  # live active runners serving the queue now
    desired: int
    demand: Shape = field(default_factory=Shape)  # summed over the requests that fit the runner size
    requests: int = 0  # allocations counted in demand
    waiting: int = 0  # of those, unassigned
    too_large: int = 0  # requests that fit no runner of runner_size (not in desired)
    too_large_needs: Shape | None = None  # the largest amount such a request asks, per dimension
    by_dimension: dict[str, int] = field(default_factory=dict)  # the bound each dimension gives

    def as_json(self) -> dict[str, Any]:
        def shape(s: Shape | None) -> dict[str, float] | None:
            return None if s is None else {"slots": s.slots, "cpu": round(s.cpu, 3), "memory_mb": s.memory_mb}

        return {
            "desired_runners": self.desired,
            "runners": self.runners,
            "runner_size": shape(self.runner_size),
            "demand": shape(self.demand),
            "requests": self.requests,
            "waiting": self.waiting,
            "too_large": self.too_large,
            "too_large_needs": shape(self.too_large_needs),
            "by_dimension": dict(self.by_dimension),
        }


def runner_size(groups: Iterable[RunnerGroup]) -> Shape | None:
    """The most common capacity among the groups (ties: the largest), None without runners."""
    counts: Counter[Shape] = Counter()
    for g in groups:
        counts[g.shape] += g.count
    if not counts:
        return None
    return max(counts, key=lambda s: (counts[s], s))


def _ceil(x: float) -> int:
    return math.ceil(x - _EPS) if x > 0 else 0


def queue_scale(queue: str, demand: Iterable[Demand], groups: Iterable[RunnerGroup]) -> QueueScale:
    groups = list(groups)
    size = runner_size(groups)
    result = QueueScale(queue, size, sum(g.count for g in groups), 0)
    sums = {d: 0.0 for d in DIMENSIONS}
    over_half = {d: 0 for d in DIMENSIONS}
    largest = {d: 0.0 for d in DIMENSIONS}
    for item in demand:
        if item.count <= 0:
            continue
        if size is not None and not item.shape.fits_in(size):
            result.too_large += item.count
            for d in DIMENSIONS:
                largest[d] = max(largest[d], getattr(item.shape, d))
            continue
        result.requests += item.count
        result.waiting += item.waiting
        for d in DIMENSIONS:
            amount = getattr(item.shape, d)
            sums[d] += amount * item.count
            if size is not None and amount > getattr(size, d) / 2:
                over_half[d] += item.count
    result.demand = Shape(int(sums["slots"]), round(sums["cpu"], 6), int(sums["memory_mb"]))
    if result.too_large:
        result.too_large_needs = Shape(int(largest["slots"]), largest["cpu"], int(largest["memory_mb"]))
    if size is None:
        result.desired = 1 if result.requests else 0
        return result
    for d in DIMENSIONS:
        capacity = getattr(size, d)
        if capacity > 0:  # a dimension the runner does not offer: every fitting request asks 0 of it
            result.by_dimension[d] = max(_ceil(sums[d] / capacity), over_half[d])
    result.desired = max(result.by_dimension.values(), default=0)
    return result


def desired_runners(demand: Iterable[Demand], groups: Iterable[RunnerGroup]) -> dict[str, QueueScale]:
    """Per queue (every queue with demand or a live runner), sorted by name."""
    by_queue_demand: dict[str, list[Demand]] = {}
    by_queue_groups: dict[str, list[RunnerGroup]] = {}
    for item in demand:
        by_queue_demand.setdefault(item.queue, []).append(item)
    for g in groups:
        by_queue_groups.setdefault(g.queue, []).append(g)
    queues = sorted(by_queue_demand.keys() | by_queue_groups.keys())
    return {q: queue_scale(q, by_queue_demand.get(q, []), by_queue_groups.get(q, [])) for q in queues}


def from_rows(
    demand_rows: Iterable[Mapping[str, Any]], runner_rows: Iterable[Mapping[str, Any]]
) -> dict[str, QueueScale]:
    """``desired_runners`` over the rows of ``autoscale_demand`` and ``autoscale_runners``."""

    def shape(row: Mapping[str, Any]) -> Shape:
        return Shape(int(row["slots"]), float(row["cpu"]), int(row["memory_mb"]))

    return desired_runners(
        (Demand(r["queue"], shape(r), int(r["count"]), int(r["waiting"])) for r in demand_rows),
        (RunnerGroup(r["queue"], shape(r), int(r["count"])) for r in runner_rows),
    )
