"""Many lightweight runners in one process, for placement races and benchmarks.

Each simulated runner registers like a real one, heartbeats, starts what was assigned to it with the
same guarded statement as ``rtx-runner`` and finishes it after a short hold, without running any
process. ``python -m testing.sim_runners --count 50 --slots 8`` (RTX_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import threading
import time
import uuid

from runtime_executor.db.connection import Database
from runtime_executor.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--cpu", type=float, default=4.0)
    parser.add_argument("--memory", type=int, default=8192)
    parser.add_argument("--hold", type=float, default=0.05, help="max seconds an allocation runs")
    parser.add_argument("--lease-timeout", type=float, default=30.0)
    args = parser.parse_args()

    settings = load_settings()
    db = Database(settings, f"rtx-sim-runners:{os.getpid()}")
    ids = [str(uuid.uuid4()) for _ in range(args.count)]
    with db.transaction() as gw:
        for i, runner_id in enumerate(ids):
            gw.register_runner(
                id=runner_id,
                name=f"sim-{i:03d}",
                hostname=socket.gethostname(),
                pid=os.getpid(),
                queues=["default"],
                slots=args.slots,
                cpu=args.cpu,
                memory_mb=args.memory,
                version="sim",
                lease_timeout=args.lease_timeout,
            )
    print(f"registered {len(ids)}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    running: list[tuple[float, str, str]] = []  # (finish at, allocation, runner)
    last_heartbeat = 0.0
    while not stop.is_set():
        now = time.monotonic()
        if now - last_heartbeat > args.lease_timeout / 4:
            # one statement per runner, as real runners do (a multi-row transaction here could
            # deadlock against an allocator's id-ordered runner locks)
            with db.statements() as gw:
                for runner_id in ids:
                    gw.heartbeat_runner(runner_id, args.lease_timeout)
            last_heartbeat = now
        with db.statements() as gw:
            for runner_id in ids:
                for row in gw.start_assigned(runner_id):
                    running.append((now + random.uniform(0, args.hold), str(row["id"]), runner_id))
        done = [r for r in running if r[0] <= now]
        running = [r for r in running if r[0] > now]
        with db.statements() as gw:
            for _, allocation_id, runner_id in done:
                gw.finish_allocation(allocation_id, runner_id, "succeeded", 0, None)
        if not done:
            time.sleep(0.01)
    with db.transaction() as gw:
        for runner_id in ids:
            gw.set_runner_state(runner_id, "stopped", ["active", "draining"])


if __name__ == "__main__":
    main()
