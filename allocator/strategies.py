"""Placement strategies: pure functions from (requests, runners) to a PlacementResult.

No database, no Airflow, no I/O: the allocator passes a snapshot in and applies the result.
Both strategies share one algorithm (``place_by_score``); they differ only in score direction.

Rules
-----
* Placement order: requests are placed one by one in the order given (the caller sorts them:
  priority desc, then oldest first). Runners are sorted by id once (a UUID sorts as its text
  does); that order breaks every tie: on a tie the earlier id wins. Same input, same output.
* Fit: a runner fits a request when it serves ``request.queue`` and, on every dimension,
  ``used + requested <= capacity`` (slots and memory exactly, cpu with a 1e-9 epsilon). A request
  asking for 0 cpu / 0 memory consumes nothing on that dimension. Each placement adds to that
  runner's in-pass usage; inputs are never mutated.
* Scoring: the runner's allocation *after* placing the request, over the dimensions D the request
  uses: slots always; cpu if request.cpu > 0 and runner.cpu > 0; memory if request.memory_mb > 0
  and runner.memory_mb > 0. Score = mean over D of used/capacity, computed as
  ``(sum_D used_d / cap_d + sum_D request_d / cap_d) / |D|`` (kube-scheduler LeastAllocated /
  MostAllocated). EvenSpreadStrategy takes the lowest score, MaxPackingStrategy the highest
  (Nomad binpack). Tie: runner id order.
* Unschedulable: if no runner of the queue has the *capacity* (ignoring current use) for a request,
  it goes to ``result.unschedulable`` with a reason such as
  ``needs cpu 8, memory 1024 MB, slots 2; largest runner in queue "default": cpu 4, memory 8192 MB,
  slots 16`` (largest = max capacity per dimension over the queue's runners), or
  ``no live runner serves queue "gpu"``. It is skipped and blocks nothing behind it.
* No starvation (reservation): a request that fits no runner now, but fits some runner's capacity,
  reserves the not-yet-reserved runner of its queue that needs the least to be freed (mean over D
  of max(0, used + requested - capacity) / capacity; tie: id order):
  ``result.reservations[runner_id] = request_id``. Nothing else is placed on a reserved runner for
  the rest of the pass; at most one reservation per runner; if every runner that could ever hold
  the request is already reserved, it simply waits. Other requests keep using the other runners.
  Because the allocator runs a new pass as soon as capacity frees, the reserved runner takes the
  large request once its running work drains, so a stream of small requests cannot starve it.
  Cost: the reserved runner's free capacity idles until then.

Performance: the result equals a plain scan of every runner of the queue per request, but runners
are grouped by queue and capacity shape, runners with identical usage share one bucket (same fit,
same score, lowest id represents it), buckets are kept sorted by load so the scan stops at the
first fitting bucket (plus exact ties), and buckets that cannot fit the smallest request of the
queue in this pass are left out of the scan.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from heapq import heapify, heappop, heapreplace
from typing import ClassVar

from allocator.model import Placement, PlacementResult, Request, RunnerState

CPU_EPSILON = 1e-9

_State = tuple[int, float, int]  # used slots, cpu, memory_mb
_Flags = tuple[bool, bool]  # score uses (cpu, memory)


class Strategy(ABC):
    """Decides where pending requests go in one pass. Implementations are pure."""

    name: ClassVar[str]

    @abstractmethod
    def place(self, requests: Sequence[Request], runners: Sequence[RunnerState]) -> PlacementResult: ...


class EvenSpreadStrategy(Strategy):
    """Place each request on the runner least allocated after placing it."""

    name = "EvenSpreadStrategy"

    def place(self, requests: Sequence[Request], runners: Sequence[RunnerState]) -> PlacementResult:
        return place_by_score(requests, runners, most_allocated=False)


class MaxPackingStrategy(Strategy):
    """Place each request on the runner most allocated after placing it that still fits."""

    name = "MaxPackingStrategy"

    def place(self, requests: Sequence[Request], runners: Sequence[RunnerState]) -> PlacementResult:
        return place_by_score(requests, runners, most_allocated=True)


STRATEGIES: dict[str, type[Strategy]] = {
    EvenSpreadStrategy.name: EvenSpreadStrategy,
    MaxPackingStrategy.name: MaxPackingStrategy,
}
_ALIASES: dict[str, type[Strategy]] = {
    "evenspread": EvenSpreadStrategy,
    "spread": EvenSpreadStrategy,
    "maxpacking": MaxPackingStrategy,
    "binpack": MaxPackingStrategy,
}


def get_strategy(name: str) -> Strategy:
    """A new strategy for a canonical class name or a case-insensitive short alias."""
    cls = STRATEGIES.get(name) or _ALIASES.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown strategy '{name}'; valid: {', '.join(STRATEGIES)}")
    return cls()


def _load(state: _State, cs: int, cc: float, cm: int, flags: _Flags) -> float:
    """Sum over D of used/capacity; the score is (load + request term) / |D|, monotone in load."""
    us, uc, um = state
    load = us / cs if cs > 0 else 1.0  # no slot capacity counts as full
    if flags[0]:
        load += uc / cc
    if flags[1]:
        load += um / cm
    return load


class _Shape:
    """Runners of one queue with one capacity shape, bucketed by identical usage."""

    __slots__ = ("cs", "cc", "cm", "min_s", "min_c", "min_m", "buckets", "orders")

    def __init__(self, caps: tuple[int, float, int], mins: tuple[int, float, int], flags: Iterable[_Flags]):
        self.cs, self.cc, self.cm = caps
        # Smallest request of the queue in this pass per dimension: a bucket that cannot fit it
        # never fits anything this pass (usage only grows), so it leaves the scan.
        self.min_s, self.min_c, self.min_m = mins
        self.buckets: dict[_State, list[int]] = {}  # usage -> sorted runner indices
        # per score-dimension set: (load, usage) of the live buckets, sorted
        self.orders: dict[_Flags, list[tuple[float, _State]]] = {self.effective(f): [] for f in flags}

    def effective(self, flags: _Flags) -> _Flags:
        return flags[0] and self.cc > 0, flags[1] and self.cm > 0

    def holds(self, rs: int, rc: float, rm: int) -> bool:
        """Capacity (not free space) is enough for the request."""
        return rs <= self.cs and (rc <= 0 or rc <= self.cc + CPU_EPSILON) and (rm <= 0 or rm <= self.cm)

    def _live(self, state: _State) -> bool:
        us, uc, um = state
        return (
            us + self.min_s <= self.cs
            and (self.min_c <= 0 or uc + self.min_c <= self.cc + CPU_EPSILON)
            and (self.min_m <= 0 or um + self.min_m <= self.cm)
        )

    def add(self, state: _State, i: int) -> None:
        members = self.buckets.get(state)
        if members is not None:
            insort(members, i)
            return
        self.buckets[state] = [i]
        if self._live(state):
            for flags, order in self.orders.items():
                insort(order, (_load(state, self.cs, self.cc, self.cm, flags), state))

    def discard(self, state: _State, i: int) -> None:
        members = self.buckets[state]
        del members[bisect_left(members, i)]
        if members:
            return
        del self.buckets[state]
        if self._live(state):
            for flags, order in self.orders.items():
                del order[bisect_left(order, (_load(state, self.cs, self.cc, self.cm, flags), state))]

    def best(self, rs: int, rc: float, rm: int, most_allocated: bool) -> tuple[float, int] | None:
        """(score, runner index) of the best fitting runner of this shape, or None."""
        cs, cc, cm = self.cs, self.cc, self.cm
        flags = (rc > 0 and cc > 0, rm > 0 and cm > 0)
        extra = rs / cs if cs > 0 else 0.0
        n = 1
        if flags[0]:
            extra += rc / cc
            n += 1
        if flags[1]:
            extra += rm / cm
            n += 1
        order = self.orders[flags]
        found_score = 0.0
        found_idx = -1
        for load, state in reversed(order) if most_allocated else order:
            score = (load + extra) / n
            if found_idx >= 0 and score != found_score:
                break  # sorted by load, so every later bucket scores worse
            us, uc, um = state
            if us + rs <= cs and (rc <= 0 or uc + rc <= cc + CPU_EPSILON) and (rm <= 0 or um + rm <= cm):
                idx = self.buckets[state][0]
                if found_idx < 0 or idx < found_idx:
                    found_score, found_idx = score, idx
        return (found_score, found_idx) if found_idx >= 0 else None


def _shortfall(state: _State, caps: tuple[int, float, int], rs: int, rc: float, rm: int) -> float:
    """Mean over D of what must be freed, as a fraction of capacity; never shrinks as usage grows."""
    us, uc, um = state
    cs, cc, cm = caps
    short = (us + rs - cs) / cs if us + rs > cs > 0 else 0.0
    n = 1
    if rc > 0 and cc > 0:
        if uc + rc > cc:
            short += (uc + rc - cc) / cc
        n += 1
    if rm > 0 and cm > 0:
        if um + rm > cm:
            short += (um + rm - cm) / cm
        n += 1
    return short / n


def _least_to_free(
    key: tuple[str, int, float, int],
    capable: list[_Shape],
    heaps: dict[tuple[str, int, float, int], list[tuple[float, int, _State]]],
    usage: list[_State],
    reserved: list[bool],
    caps_of: list[tuple[int, float, int]],
) -> int:
    """Index of the unreserved runner (of the capable shapes) needing the least freed, or -1.

    One lazy heap per request shape, so a backlog of similar requests reserving runner after
    runner costs O(runners log runners) rather than a scan per request. Shortfalls only grow
    within a pass, so an entry computed from older usage is a lower bound: refresh it on top.
    """
    _, rs, rc, rm = key
    heap = heaps.get(key)
    if heap is None:
        heap = []
        for shape in capable:
            caps = (shape.cs, shape.cc, shape.cm)
            for state, members in shape.buckets.items():  # includes buckets left out of the scan
                short = _shortfall(state, caps, rs, rc, rm)
                heap.extend((short, i, state) for i in members)
        heapify(heap)
        heaps[key] = heap
    while heap:
        _, i, state = heap[0]
        if reserved[i]:
            heappop(heap)
        elif usage[i] != state:
            heapreplace(heap, (_shortfall(usage[i], caps_of[i], rs, rc, rm), i, usage[i]))
        else:
            return i
    return -1


class _Queue:
    __slots__ = ("shapes", "max_s", "max_c", "max_m")

    def __init__(self) -> None:
        self.shapes: dict[tuple[int, float, int], _Shape] = {}


def _unschedulable_reason(req: Request, queue: _Queue) -> str:
    return (
        f"needs cpu {req.cpu:g}, memory {req.memory_mb} MB, slots {req.slots}; "
        f'largest runner in queue "{req.queue}": '
        f"cpu {queue.max_c:g}, memory {queue.max_m} MB, slots {queue.max_s}"
    )


def place_by_score(
    requests: Sequence[Request], runners: Sequence[RunnerState], *, most_allocated: bool
) -> PlacementResult:
    """One placement pass (see the module docstring). ``most_allocated`` picks the highest score
    (MaxPacking); otherwise the lowest (EvenSpread)."""
    result = PlacementResult()
    ordered = sorted(runners, key=lambda r: r.id)
    ids = [r.id for r in ordered]

    # Per requested queue: smallest request per dimension and the score-dimension sets in use.
    stats: dict[str, tuple[int, float, int, set[_Flags]]] = {}
    for req in requests:
        rc = req.cpu if req.cpu > 0 else 0.0
        rm = req.memory_mb if req.memory_mb > 0 else 0
        st = stats.get(req.queue)
        if st is None:
            stats[req.queue] = (req.slots, rc, rm, {(rc > 0, rm > 0)})
        else:
            st[3].add((rc > 0, rm > 0))
            if req.slots < st[0] or rc < st[1] or rm < st[2]:
                stats[req.queue] = (min(st[0], req.slots), min(st[1], rc), min(st[2], rm), st[3])

    # Only queues somebody asks for are indexed; runners serving none of them are never looked at.
    queues: dict[str, _Queue] = {}
    usage: list[_State] = []
    caps_of: list[tuple[int, float, int]] = []
    member_of: list[list[_Shape]] = []
    for i, r in enumerate(ordered):
        state: _State = (r.used_slots, float(r.used_cpu), r.used_memory_mb)
        caps = (r.slots, float(r.cpu), r.memory_mb)
        usage.append(state)
        caps_of.append(caps)
        shapes: list[_Shape] = []
        for q in r.queues:
            st = stats.get(q)
            if st is None:
                continue
            queue = queues.get(q)
            if queue is None:
                queue = queues[q] = _Queue()
            shape = queue.shapes.get(caps)
            if shape is None:
                shape = queue.shapes[caps] = _Shape(caps, st[:3], st[3])
            shape.add(state, i)
            shapes.append(shape)
        member_of.append(shapes)
    for queue in queues.values():
        queue.max_s = max(s.cs for s in queue.shapes.values())
        queue.max_c = max(s.cc for s in queue.shapes.values())
        queue.max_m = max(s.cm for s in queue.shapes.values())

    # Usage only grows and reservations only accumulate within a pass, so a request shape that
    # found no runner (or nothing to reserve) will not find one later: skip repeats cheaply.
    no_fit: set[tuple[str, int, float, int]] = set()
    no_reservation: set[tuple[str, int, float, int]] = set()
    heaps: dict[tuple[str, int, float, int], list[tuple[float, int, _State]]] = {}
    reserved = [False] * len(ordered)
    sign = -1.0 if most_allocated else 1.0
    for req in requests:
        queue = queues.get(req.queue)
        if queue is None:
            result.unschedulable[req.id] = f'no live runner serves queue "{req.queue}"'
            continue
        rs = req.slots
        rc = req.cpu if req.cpu > 0 else 0.0
        rm = req.memory_mb if req.memory_mb > 0 else 0
        capable = [s for s in queue.shapes.values() if s.holds(rs, rc, rm)]
        if not capable:
            result.unschedulable[req.id] = _unschedulable_reason(req, queue)
            continue
        key = (req.queue, rs, rc, rm)
        if key in no_reservation:
            continue

        best: tuple[float, int] | None = None
        if key not in no_fit:
            for shape in capable:
                found = shape.best(rs, rc, rm, most_allocated)
                if found is not None:
                    cand = (sign * found[0], found[1])  # negation is exact: ties stay ties
                    if best is None or cand < best:
                        best = cand

        if best is None:
            no_fit.add(key)
            i = _least_to_free(key, capable, heaps, usage, reserved, caps_of)
            if i < 0:
                no_reservation.add(key)  # every runner that could hold it is reserved: wait
                continue
            for shape in member_of[i]:
                shape.discard(usage[i], i)
            reserved[i] = True
            result.reservations[ids[i]] = req.id
            continue

        i = best[1]
        old = usage[i]
        new = (old[0] + rs, old[1] + rc, old[2] + rm)
        if new != old:
            for shape in member_of[i]:
                shape.discard(old, i)
                shape.add(new, i)
            usage[i] = new
        result.placements.append(Placement(request_id=req.id, runner_id=ids[i]))
    return result
