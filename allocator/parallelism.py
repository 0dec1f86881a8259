"""A scheduler's ``[core] parallelism``, held by the allocator: a pure function, no database.

The shim lets the scheduler queue up to ``queue_ahead`` tasks beyond its parallelism, so that the
next task already waits in rtx's queue when a runner slot frees, instead of after the scheduler's
next loop has seen the finish. The cap moves here: each allocation carries its scheduler's
parallelism (``max_running``), and a placement pass keeps, in placement order, only as many of a
scheduler's placements as leave its assigned + running allocations at or under that figure. The
rest stay unassigned and are placed by the pass a finish starts.

A pass first finds the schedulers with capped rows waiting (``pending_capped_schedulers.sql``),
takes their parallelism lock and counts what each has assigned or running, leaves the rows of
schedulers already at their figure out of its claim (so they never fill a claim ahead of rows that
could run now), and after the strategy keeps only the placements within each scheduler's room.

Invariant: no scheduler ever has more than ``max_running`` allocations assigned or running. Only a
placement adds to that count, under that scheduler's parallelism lock (``lock_schedulers.sql``,
taken by every pass that places its rows, after the runners' locks), after reading the count;
everything else (starts, finishes, rescues) keeps it or lowers it. A row claimed for a scheduler
that had no capped rows waiting when the pass looked (its first row committed in between) carries
a cap the pass did not count: ``within_parallelism`` keeps it only if the pass counted that
scheduler, so such a row waits for the next pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from allocator.model import Placement


def within_parallelism(
    placements: Sequence[Placement], rows: Mapping[Any, Mapping[str, Any]], in_flight: Mapping[int, int]
) -> list[Placement]:
    """The placements that keep every scheduler at or under its ``max_running``, in the order given.

    ``rows``: claimed row by request id (its ``scheduler_job_id`` and ``max_running``);
    ``in_flight``: per scheduler the pass counted (under its lock), its allocations assigned or
    running. A row without a cap, or without a scheduler, is always kept; a capped row of a
    scheduler the pass did not count never is (it waits for the next pass)."""
    taken: dict[int, int] = {}
    kept = []
    for p in placements:
        row = rows[p.request_id]
        job, cap = row.get("scheduler_job_id"), row.get("max_running")
        if cap is not None and job is not None:
            if job not in in_flight:
                continue
            used = in_flight[job] + taken.get(job, 0)
            if used >= cap:
                continue
            taken[job] = taken.get(job, 0) + 1
        kept.append(p)
    return kept


def full_schedulers(caps: Mapping[int, int], in_flight: Mapping[int, int]) -> list[int]:
    """The schedulers already at their parallelism (``caps``: scheduler -> its ``max_running``)."""
    return sorted(job for job, cap in caps.items() if in_flight.get(job, 0) >= cap)
