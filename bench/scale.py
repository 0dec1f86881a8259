"""Scale on one Postgres: connections, Postgres CPU, NOTIFY traffic and pickup with many idle runners.

    make bench-scale             # or: python -m bench.scale --runners 2,50,200 --real 50

For each runner count N, on a fresh database: one allocator and N runners serving ``default``. Up to
``--real`` of them are real ``rtx-runner serve`` processes; the rest are real ``Runner`` objects
hosted ``--per-host`` to a process (``bench.runner_host``: the same connections, loops, LISTEN and
heartbeats, only the process is shared). Once every runner is registered and settled:

* connections: ``pg_stat_activity`` of the benchmark database by ``application_name``, per
  component (allocator; each runner, with the largest and smallest count over runners);
* Postgres CPU while idle for ``--idle`` s: time on a CPU of the database's backends
  (``/proc/<pid>/schedstat``, nanoseconds), as a percentage of one core; transactions committed per second
  (``pg_stat_database``); NOTIFYs seen on rtx's channels by a listener of the benchmark;
* pickup: ``--tasks`` allocations inserted one at a time (as bench.pickup): insert -> task process
  started (``bench.noop_task``), p50 / p99. They go to a queue only two real runners serve (the
  probes), so the figure compares like with like whatever N is: what N changes is everything
  around them (placement over N runners, NOTIFYs delivered to N listeners, N runners' load).

Postgres is a throwaway cluster of the benchmark's own (fsync on, ``--max-connections``), so the
backends measured are rtx's alone. Prints one JSON line per N.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import psutil
import psycopg

from bench.common import SCHEMA, active_runners, bench_database, percentile
from runtime_executor.db.channels import allocator_channel, runner_channel
from runtime_executor.db.connection import Database
from runtime_executor.settings import Settings
from testing.daemons import Daemon, Daemons, daemon_env, query, wait_for

RUNNER_ARGS = ("--slots", "16", "--cpu", "4", "--memory", "8192")
PROBES = 2  # real runners that take the pickup tasks, whatever the number of runners around them
PROBE_QUEUE = "probe"
_ROLE_SUFFIX = re.compile(r"-(heartbeat|control|listen|usage|work)$")


def component(application_name: str) -> tuple[str, str]:
    """(component, instance) of an rtx connection by its application_name."""
    if application_name.startswith("rtx-runner:"):
        name = _ROLE_SUFFIX.sub("", application_name.removeprefix("rtx-runner:"))
        return "runner", name
    if application_name.startswith("rtx-allocator"):
        return "allocator", re.sub(r"-(upkeep|prune|listen|metrics)$", "", application_name)
    if application_name.startswith("rtx-executor"):
        return "shim", application_name
    return "other", application_name


def connections(url: str, dbname: str) -> dict:
    rows = query(
        url,
        "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %(d)s AND pid <> pg_backend_pid()"
        " GROUP BY application_name",
        {"d": dbname},
    )
    per: dict[str, Counter] = defaultdict(Counter)
    roles: Counter = Counter()
    for app, n in rows:
        comp, instance = component(app)
        per[comp][instance] += n
        if comp == "runner":
            match = _ROLE_SUFFIX.search(app)
            roles[match.group(1) if match else "work"] += n
    runners = per.get("runner", Counter())
    return {
        "total": sum(n for _, n in rows),
        "allocator": sum(per.get("allocator", Counter()).values()),
        "runners": sum(runners.values()),
        "per_runner_max": max(runners.values(), default=0),
        "per_runner_min": min(runners.values(), default=0),
        "runner_roles": dict(sorted(roles.items())),
        "other": sum(per.get("other", Counter()).values()),
    }


def backend_cpu(url: str, dbname: str) -> dict[int, tuple[str, float]]:
    """(role, seconds of CPU used so far: user + system) of each backend of the database."""
    out = {}
    rows = query(
        url, "SELECT pid, application_name FROM pg_stat_activity WHERE datname = %(d)s", {"d": dbname}
    )
    for pid, app in rows:
        try:  # nanoseconds on a CPU (schedstat): utime/stime in clock ticks are too coarse here
            seconds = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
        except OSError:
            continue
        comp, _ = component(app)
        match = _ROLE_SUFFIX.search(app) or re.search(r"-(upkeep|prune|listen|metrics)$", app)
        role = f"{comp}:{match.group(1) if match else 'work'}"
        out[pid] = (role, seconds)
    return out


def commits(url: str, dbname: str) -> int:
    return query(url, "SELECT xact_commit FROM pg_stat_database WHERE datname = %(d)s", {"d": dbname})[0][0]


class NotifyCounter:
    """Counts NOTIFYs on rtx's channels: the allocators' one, and every registered runner's own
    (each heard by that runner's heartbeat session alone, runtime_executor.db.channels)."""

    def __init__(self, url: str, schema: str = SCHEMA) -> None:
        self.counts: Counter = Counter()
        self._stop = threading.Event()
        self._conn = psycopg.connect(url, autocommit=True, application_name="bench-scale-listen")
        self._allocator = allocator_channel(schema)
        self._conn.execute(f'LISTEN "{self._allocator}"')
        for (runner_id,) in self._conn.execute(
            f"SELECT id::text FROM {schema}.runners WHERE state = 'active'"
        ):
            self._conn.execute(f'LISTEN "{runner_channel(schema, runner_id)}"')
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for n in self._conn.notifies(timeout=0.5):
                self.counts["allocator" if n.channel == self._allocator else "runner"] += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


def insert(db: Database, record: Path, i: int) -> tuple[str, float]:
    allocation_id = str(uuid.uuid4())
    with db.transaction() as gw:
        sent = time.time()
        gw.insert_allocation(
            id=allocation_id, kind="task", dag_id="bench", task_id=f"t{i}", run_id="scale", map_index=-1,
            try_number=1, callback_id=None, queue=PROBE_QUEUE, priority_weight=1, slots=1, cpu=0.0, memory_mb=0,
            state="unassigned", workload=json.dumps(str(record)), scheduler_job_id=None, reason=None,
        )  # fmt: skip
    return allocation_id, sent


def pickup(url: str, record: Path, tasks: int, warmup: int, gap: float) -> dict:
    db = Database(Settings(database_url=url), "bench-scale")
    sent: dict[str, float] = {}
    try:
        for i in range(warmup + tasks):
            allocation_id, at = insert(db, record, i)
            sent[allocation_id] = at
            wait_for(lambda a=allocation_id: record.exists() and a in record.read_text(), 30, interval=0.001)
            time.sleep(gap)
    finally:
        db.close()
    started = dict(line.split() for line in record.read_text().splitlines())
    ms = [(float(started[a]) - sent[a]) * 1000 for a in list(sent)[warmup:]]
    return {
        "tasks": len(ms),
        **{f"p{p}_ms": round(percentile(ms, p), 2) for p in (50, 90, 95, 99)},
        "max_ms": round(max(ms), 2),
    }


def measure(n: int, args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"rtx-bench-scale-{n}-"))
    record = work / "started.txt"
    env = {"RTX_TASK_ENTRY": "bench.noop_task:run", "RTX_LOG_LEVEL": "warning"}
    env.update(kv.split("=", 1) for kv in args.env)
    # a server of its own: 200 runners need more connections than a shared server allows, and its
    # backends' CPU is then rtx's alone; durability settings as in production (fsync on)
    options = f"-c max_connections={args.max_connections} -c fsync=on -c synchronous_commit=on -c full_page_writes=on"
    with bench_database(own_cluster_options=options) as url:
        dbname = url.rsplit("/", 1)[1]
        daemons = Daemons(url, work)
        hosts: list[Daemon] = []
        try:
            daemons.allocator(**env)
            # the pickup probes: PROBES real runners (the only ones serving the probe queue) among n
            probes = min(PROBES, n)
            for i in range(probes):
                daemons.runner(*RUNNER_ARGS, "--queue", "default", "--queue", PROBE_QUEUE, "--spare-processes",
                               str(args.spares), name=f"probe-{i}", fake=False, **env)  # fmt: skip
            real = min(n, max(args.real, probes))
            for i in range(probes, real):
                daemons.runner(
                    *RUNNER_ARGS,
                    "--spare-processes",
                    str(args.spares),
                    name=f"real-{i:03d}",
                    fake=False,
                    **env,
                )
            left, h = n - real, 0
            while left > 0:
                count = min(left, args.per_host)
                argv = [sys.executable, "-m", "bench.runner_host", "--count", str(count), "--prefix", f"sim{h}",
                        "--spare-processes", str(args.hosted_spares)]  # fmt: skip
                if not args.hosted_listen:
                    argv.append("--no-listen")
                hosts.append(Daemon(f"host-{h}", argv, daemon_env(url, **env), work))
                left -= count
                h += 1
            wait_for(
                lambda: active_runners(url) >= n,
                60 + n * 2, interval=0.5, what=f"{n} runners registered",
            )  # fmt: skip
            time.sleep(args.settle)  # start-up done: spares forked, first polls and heartbeats past
            conns = connections(url, dbname)
            rss = [psutil.Process(d.pid).memory_info().rss / 2**20 for d in daemons.started[1:]]
            listener = NotifyCounter(url)
            cpu0, commits0, t0 = backend_cpu(url, dbname), commits(url, dbname), time.monotonic()
            time.sleep(args.idle)
            cpu1, commits1, t1 = backend_cpu(url, dbname), commits(url, dbname), time.monotonic()
            listener.close()
            by_role: Counter = Counter()
            for pid, (role, seconds) in cpu1.items():
                if pid in cpu0:
                    by_role[role] += seconds - cpu0[pid][1]
            used = sum(by_role.values())
            idle = {
                "seconds": round(t1 - t0, 1),
                "postgres_cpu_percent_of_a_core": round(100 * used / (t1 - t0), 2),
                "per_100_runners": round(100 * used / (t1 - t0) * 100 / n, 2),
                "cpu_percent_by_role": {r: round(100 * v / (t1 - t0), 2) for r, v in sorted(by_role.items())},
                "commits_per_s": round((commits1 - commits0) / (t1 - t0), 1),
                "notifies": dict(listener.counts),
            }
            result = {
                "runners": n,
                "real_processes": real,
                "hosted": n - real,
                "hosted_listen": args.hosted_listen,
                "connections": conns,
                "idle": idle,
                "runner_rss_mb": round(sum(rss) / len(rss), 1) if rss else None,
            }
            listener = NotifyCounter(url)
            result["pickup"] = pickup(url, record, args.tasks, args.warmup, args.gap)
            listener.close()
            # each NOTIFY reaches the sessions listening on its channel: the allocator's, or the one
            # runner's heartbeat it is for (before per-runner channels: every runner's, N per NOTIFY)
            sent = dict(listener.counts)
            result["pickup"]["notifies"] = sent
            result["pickup"]["notify_deliveries_per_task"] = round(
                (sent.get("runner", 0) + sent.get("allocator", 0)) / (args.tasks + args.warmup), 1
            )
        finally:
            for d in hosts:
                d.stop(timeout=60)
            daemons.stop_all()
    shutil.rmtree(work)  # the daemons' logs; kept when the run failed
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", default="2,50,200", help="comma-separated runner counts")
    parser.add_argument("--real", type=int, default=50, help="at most this many real rtx-runner processes")
    parser.add_argument("--per-host", type=int, default=50, help="runners per bench.runner_host process")
    parser.add_argument("--spares", type=int, default=2, help="--spare-processes of each real runner")
    parser.add_argument(
        "--hosted-spares", type=int, default=0, help="--spare-processes of each hosted runner"
    )
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of the idle measurement")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every daemon (repeatable)")
    parser.add_argument("--max-connections", type=int, default=1000, help="of the benchmark's own server")
    parser.add_argument(
        "--hosted-listen",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-hosted-listen: the hosted runners LISTEN on nothing (a diagnostic: what the NOTIFY"
        " fan-out to every listening backend costs, Postgres 15 signals them all)",
    )
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--gap", type=float, default=0.05)
    args = parser.parse_args()
    for n in (int(x) for x in args.runners.split(",")):
        print(json.dumps(measure(n, args)), flush=True)


if __name__ == "__main__":
    main()
