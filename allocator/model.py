"""Plain data the placement strategies work on: no database, no Airflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

# Ids are opaque to the strategies: hashable and ordered. The allocator passes the database's UUIDs
# as they come (no conversion of thousands of rows a pass), tests pass strings; one pass uses one kind.
Id = str | UUID


@dataclass(frozen=True, slots=True)
class Request:
    """One pending allocation. Strategies receive requests already in placement order
    (higher priority_weight first, then oldest first)."""

    id: Id
    queue: str
    slots: int
    cpu: float
    memory_mb: int
    priority_weight: int = 1


@dataclass(frozen=True, slots=True)
class RunnerState:
    """A live, active runner: its capacity and what its assigned + running allocations reserve."""

    id: Id
    queues: frozenset[str]
    slots: int
    cpu: float
    memory_mb: int
    used_slots: int = 0
    used_cpu: float = 0.0
    used_memory_mb: int = 0


@dataclass(frozen=True, slots=True)
class Placement:
    request_id: Id
    runner_id: Id


@dataclass(slots=True)
class PlacementResult:
    """What one placement pass decided.

    placements: request -> runner, in the order they were decided.
    unschedulable: request id -> reason, for requests no live runner of their queue could ever hold.
    reservations: runner id -> request id, runners held back for a large request that fits there
        once running work finishes (nothing smaller was placed on them in this pass).
    """

    placements: list[Placement] = field(default_factory=list)
    unschedulable: dict[Id, str] = field(default_factory=dict)
    reservations: dict[Id, Id] = field(default_factory=dict)
