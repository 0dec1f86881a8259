"""``rtx status`` as text: the snapshot of ``runtime_executor.status`` laid out in tables."""

from __future__ import annotations


def _format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _triple(values: dict) -> str:
    return f"{values['slots']:g}/{values['cpu']:g}/{values['memory_mb']:g}"


def _task_label(a: dict) -> str:
    if a["kind"] == "callback":
        return f"callback {a['callback_id']}"
    label = f"{a['dag_id']}.{a['task_id']}"
    if a["map_index"] is not None and a["map_index"] >= 0:
        label += f"[{a['map_index']}]"
    return f"{label} {a['run_id']} try {a['try_number']}"


def _listed(shown: int, total: int) -> str:
    """The list is cut at the snapshot's limit; the count beside it is exact."""
    return f" (first {shown} of {total})" if shown < total else ""


def render_status(snap: dict) -> str:
    t = snap["totals"]
    out = [
        f"rtx status at {snap['generated_at']}",
        "",
        "Resources (capacity / reserved / free)",
        _format_table(
            ["scope", "runners", "slots", "cpu", "memory MB", "unassigned"],
            [
                [
                    "all",
                    str(t["runners"]),
                    *(
                        f"{t[d]['capacity']:g} / {t[d]['reserved']:g} / {t[d]['free']:g}"
                        for d in ("slots", "cpu", "memory_mb")
                    ),
                    str(t["allocations"].get("unassigned", 0)),  # exact: not the listed rows
                ]
            ]
            + [
                [
                    f"queue {q}",
                    str(e["runners"]),
                    *(
                        f"{e[d]['capacity']:g} / {e[d]['reserved']:g} / {e[d]['free']:g}"
                        for d in ("slots", "cpu", "memory_mb")
                    ),
                    str(e["unassigned"]),
                ]
                for q, e in snap["queues"].items()
            ],
        ),
        "",
        "Runners (slots/cpu/memory MB)",
        _format_table(
            ["name", "host", "queues", "state", "capacity", "reserved", "heartbeat", "allocations"],
            [
                [
                    r["name"],
                    r["hostname"],
                    ",".join(r["queues"]),
                    r["state"],
                    _triple(r["capacity"]),
                    _triple(r["reserved"]),
                    f"{r['heartbeat_age_s']:.1f}s ago",
                    str(r.get("allocation_count", len(r["allocations"]))),
                ]
                for r in snap["runners"]
            ],
        ),
        "",
        "Allocations on runners"
        + _listed(
            sum(len(r["allocations"]) for r in snap["runners"]),
            sum(r.get("allocation_count", len(r["allocations"])) for r in snap["runners"]),
        ),
        _format_table(
            ["runner", "task", "state", "request", "running"],
            [
                [
                    r["name"],
                    _task_label(a),
                    a["state"],
                    _triple(a["request"]),
                    f"{a['running_s']:.1f}s" if a["running_s"] is not None else "-",
                ]
                for r in snap["runners"]
                for a in r["allocations"]
            ],
        ),
        "",
        "Unassigned allocations" + _listed(len(snap["unassigned"]), t["allocations"].get("unassigned", 0)),
        _format_table(
            ["task", "queue", "priority", "request", "waiting", "unschedulable"],
            [
                [
                    _task_label(a),
                    a["queue"],
                    str(a["priority_weight"]),
                    _triple(a["request"]),
                    f"{a['waiting_s']:.1f}s",
                    a["unschedulable_reason"] or "",
                ]
                for a in snap["unassigned"]
            ],
        ),
        "",
        "Allocations by state: "
        + (", ".join(f"{k} {v}" for k, v in sorted(t["allocations"].items())) or "none"),
    ]
    return "\n".join(out)
