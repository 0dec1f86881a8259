"""Fixtures for tests that run the daemons as real processes (import them into a test module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testing.daemons import Daemons, query, wait_for

# Short leases for tests. A runner needs lease_timeout > heartbeat_interval + kill_grace + 1 s (room to
# fence before the database calls the lease expired), so the 3 s lease takes a 1 s kill grace.
FAST = {
    "RTX_HEARTBEAT_INTERVAL": "0.5",
    "RTX_LEASE_TIMEOUT": "3",
    "RTX_KILL_GRACE": "1",
    "RTX_DRAIN_TIMEOUT": "20",
}


@pytest.fixture
def daemons(db_url, migrated, tmp_path, request) -> Iterator[Daemons]:
    d = Daemons(db_url, tmp_path)
    try:
        yield d
    finally:
        d.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(d.logs()[-20000:])


def wait_runners(db_url: str, count: int, timeout: float = 60) -> list[str]:
    def ready():
        rows = query(
            db_url, "SELECT id::text FROM runtime_executor.runners WHERE state = 'active' ORDER BY name"
        )
        return [r[0] for r in rows] if len(rows) >= count else None

    return wait_for(ready, timeout, what=f"{count} active runners")


def states(db_url: str, ids: list[str]) -> dict[str, str]:
    rows = query(
        db_url,
        "SELECT id::text, state FROM runtime_executor.allocations WHERE id = ANY(%(ids)s::uuid[])",
        {"ids": ids},
    )
    return dict(rows)


def wait_states(db_url: str, ids: list[str], allowed: set[str], timeout: float = 60) -> dict[str, str]:
    return wait_for(
        lambda: (s := states(db_url, ids)) and len(s) == len(ids) and set(s.values()) <= allowed and s,
        timeout,
        what=f"allocations to reach {allowed}",
    )


def read_records(path) -> list[tuple[str, str, str, int, float]]:
    """Lines of tests.support.fake_task: (what, allocation, runner, pid, time)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        what, allocation, runner, pid, at = line.split()
        out.append((what, allocation, runner, int(pid), float(at)))
    return out


def assert_never_overcommitted(db_url: str) -> None:
    """Replay the audit log: at no point did a runner's assigned + running sum exceed its capacity."""
    runners = {
        r[0]: r[1:]
        for r in query(db_url, "SELECT id::text, slots, cpu, memory_mb FROM runtime_executor.runners")
    }
    requests = {
        r[0]: r[1:]
        for r in query(db_url, "SELECT id::text, slots, cpu, memory_mb FROM runtime_executor.allocations")
    }
    events = query(
        db_url,
        "SELECT allocation_id::text, runner_id::text, from_state, to_state FROM runtime_executor.allocation_events ORDER BY id",
    )
    held: dict[str, list[float]] = {r: [0, 0.0, 0] for r in runners}
    holding = {"assigned", "running"}
    for allocation, runner, from_state, to_state in events:
        if runner is None or allocation not in requests:
            continue
        was, now = from_state in holding, to_state in holding
        if was == now:
            continue
        sign = 1 if now else -1
        for i in range(3):
            held[runner][i] += sign * requests[allocation][i]
        cap = runners[runner]
        assert held[runner][0] <= cap[0] and held[runner][1] <= cap[1] + 1e-9 and held[runner][2] <= cap[2], (
            f"runner {runner} over-committed: holds {held[runner]} of {cap}"
        )
