"""Many real runners in one process, for scale benchmarks where one process per runner would not fit.

Each is the real ``runner.service.Runner`` (its own connections, loops, LISTEN, heartbeats and
polls, exactly as ``rtx-runner serve`` runs them); only the process is shared, and with it the fork
server. SIGTERM drains them all.

    python -m bench.runner_host --count 150 --prefix sim --slots 16 --cpu 4 --memory 8192
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from runner.service import Capacity, Runner
from runtime_executor.db.channels import runner_channel
from runtime_executor.logs import configure_logging
from runtime_executor.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="sim")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--cpu", type=float, default=4.0)
    parser.add_argument("--memory", type=int, default=8192)
    parser.add_argument("--spare-processes", type=int, default=0)
    parser.add_argument(
        "--no-listen",
        action="store_true",
        help="diagnostic: these runners LISTEN on nothing (no NOTIFY wakes them; their polls still do)",
    )
    args = parser.parse_args()

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    runners = [
        Runner(
            settings,
            Capacity(args.slots, args.cpu, args.memory),
            ["default"],
            name=f"{args.prefix}-{i:03d}",
            spare_processes=args.spare_processes,
        )
        for i in range(args.count)
    ]
    for runner in runners:
        if args.no_listen:
            runner.listener.unsubscribe(runner_channel(settings.schema, runner.runner_id))
        runner.start()
    print(f"started {len(runners)} runners in pid {os.getpid()}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    threads = [threading.Thread(target=r.drain_and_stop, args=(5.0,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
