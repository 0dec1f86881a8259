"""A snapshot of the executor's state, shared by ``rtx status`` and the Executor Status page.

Plain dicts of JSON-able values (the documented ``rtx status --json`` shape):

    {"generated_at": iso time,
     "totals": {"slots": {"capacity", "reserved", "free"}, "cpu": {...}, "memory_mb": {...},
                "runners": n, "allocations": {state: count}, "unschedulable": n, "truncated": bool},
     "queues": {queue: {"slots": {...}, "cpu": {...}, "memory_mb": {...}, "runners": n, "unassigned": n,
                        "unschedulable": n}},
     "runners": [{id, name, hostname, pid, queues, state, capacity, reserved, free, heartbeat_age_s,
                  lease_expired, host_cpu_percent, host_memory_used_mb, allocation_count,
                  allocations: [...]}],
     "unassigned": [allocation, ...],
     "autoscale": {queue: {"desired_runners", "runners", "runner_size", "demand", "requests", "waiting",
                           "too_large", "too_large_needs", "by_dimension"}}}   (runtime_executor.autoscale)

Invariant: every count (``totals``, ``queues``, ``allocation_count``, reserved amounts) comes from
an aggregate query and is exact whatever the number of rows; only the lists (``unassigned`` and
each runner's ``allocations``) are cut at ``limit`` rows, and ``totals.truncated`` says when.

No secrets: the workload (with its token) is never selected.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from runtime_executor.autoscale import from_rows
from runtime_executor.db.gateway import Gateway

DIMENSIONS = ("slots", "cpu", "memory_mb")


def _allocation(row: dict) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "kind": row["kind"],
        "dag_id": row["dag_id"],
        "task_id": row["task_id"],
        "run_id": row["run_id"],
        "map_index": row["map_index"],
        "try_number": row["try_number"],
        "callback_id": row["callback_id"],
        "queue": row["queue"],
        "priority_weight": row["priority_weight"],
        "request": {"slots": row["slots"], "cpu": row["cpu"], "memory_mb": row["memory_mb"]},
        "state": row["state"],
        "runner_id": str(row["runner_id"]) if row["runner_id"] else None,
        "unschedulable_reason": row["unschedulable_reason"],
        "waiting_s": round(float(row["age"]), 3) if row["age"] is not None else None,
        "running_s": round(float(row["running_for"]), 3) if row["running_for"] is not None else None,
        "usage": {
            "cpu_percent": row["cpu_percent"],
            "rss_mb": row["rss_mb"],
            "peak_rss_mb": row["peak_rss_mb"],
        },
        "pid": row["pid"],
    }


def _amounts(capacity: float, reserved: float) -> dict[str, float]:
    return {"capacity": capacity, "reserved": reserved, "free": capacity - reserved}


def _queue_entry() -> dict[str, Any]:
    return {"runners": 0, "unassigned": 0, "unschedulable": 0, **{d: [0.0, 0.0] for d in DIMENSIONS}}


def snapshot(gw: Gateway, *, limit: int = 1000) -> dict[str, Any]:
    runners_rows = gw.status_runners()
    allocations = [_allocation(r) for r in gw.status_allocations(limit)]
    counted = gw.count_by_state()
    by_runner: dict[str, list[dict]] = {}
    for a in allocations:
        if a["runner_id"]:
            by_runner.setdefault(a["runner_id"], []).append(a)

    runners = []
    totals = {d: [0.0, 0.0] for d in DIMENSIONS}
    queues: dict[str, dict[str, Any]] = {}
    for r in runners_rows:
        live = r["state"] in ("active", "draining") and not r["lease_expired"]
        state = r["state"] if live or r["state"] in ("stopped", "lost") else "lost"
        capacity = {"slots": r["slots"], "cpu": float(r["cpu"]), "memory_mb": int(r["memory_mb"])}
        reserved = {
            "slots": int(r["used_slots"]),
            "cpu": round(float(r["used_cpu"]), 3),
            "memory_mb": int(r["used_memory_mb"]),
        }
        runners.append(
            {
                "id": str(r["id"]),
                "name": r["name"],
                "hostname": r["hostname"],
                "pid": r["pid"],
                "queues": list(r["queues"]),
                "state": state,
                "capacity": capacity,
                "reserved": reserved,
                "free": {d: capacity[d] - reserved[d] for d in DIMENSIONS},
                "heartbeat_age_s": round(float(r["heartbeat_age"]), 3),
                "lease_expired": bool(r["lease_expired"]),
                "host_cpu_percent": r["host_cpu_percent"],
                "host_memory_used_mb": r["host_memory_used_mb"],
                "allocation_count": int(r["allocation_count"]),
                "allocations": by_runner.get(str(r["id"]), []),
            }
        )
        if state != "active":
            continue
        for d in DIMENSIONS:
            totals[d][0] += capacity[d]
            totals[d][1] += reserved[d]
        for q in r["queues"]:
            entry = queues.setdefault(q, _queue_entry())
            entry["runners"] += 1
            for d in DIMENSIONS:
                entry[d][0] += capacity[d]
                entry[d][1] += reserved[d]

    unassigned = [a for a in allocations if a["state"] == "unassigned"]
    counts: dict[str, int] = {}
    unschedulable = 0
    for row in counted:
        counts[row["state"]] = counts.get(row["state"], 0) + int(row["count"])
        if row["state"] == "unassigned":
            entry = queues.setdefault(row["queue"], _queue_entry())
            entry["unassigned"] += int(row["count"])
            entry["unschedulable"] += int(row["unschedulable"])
            unschedulable += int(row["unschedulable"])

    return {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "totals": {
            **{d: _amounts(*totals[d]) for d in DIMENSIONS},
            "runners": sum(1 for r in runners if r["state"] == "active"),
            "allocations": counts,
            "unschedulable": unschedulable,
            "truncated": len(allocations) >= limit,
        },
        "queues": {
            q: {
                "runners": e["runners"],
                "unassigned": e["unassigned"],
                "unschedulable": e["unschedulable"],
                **{d: _amounts(*e[d]) for d in DIMENSIONS},
            }
            for q, e in sorted(queues.items())
        },
        "runners": runners,
        "unassigned": unassigned,
        "autoscale": {q: scale.as_json() for q, scale in from_rows(*gw.autoscale_rows()).items()},
    }
