"""rtx against LocalExecutor (and CeleryExecutor) on real Airflow: what a user feels.

    make bench-airflow                       # or: python -m bench.airflow --runs 2
    python -m bench.airflow --executors local,rtx --workloads fanout_64 --runs 1

Every round deploys each executor afresh (a new database and AIRFLOW_HOME; api-server, scheduler and
dag-processor; for rtx one allocator and two runners of 16 slots; for Celery a Redis broker and one
worker of ``--parallelism`` processes) and runs the same DAGs (``bench/airflow_dags``) one after
the other. Rounds interleave the executors, so a noisy moment of a shared machine hits them alike;
the table gives min/median/max over rounds and the ratio rtx/Local (and Celery/Local) pair by
pair, round by round.

Per DAG run it records, from Airflow's own ``task_instance`` and ``dag_run`` rows:

* makespan (dag run start -> end), scheduled -> queued and queued -> start percentiles, the task run
  time (Airflow's start -> end of the task) and, for the chain, the overhead per task (makespan
  less the tasks' own run time, over the number of tasks);

and from the processes (psutil, whole process trees, reaped children included):

* CPU-seconds of each component and of the task side (everything the executor starts for tasks:
  LocalExecutor's workers, rtx's runners' children, Celery's pool), per task;
* the api-server's request count and latency (a timing middleware, ``bench/api_timing_plugin.py``);
* during the sleepers, the PSS of the task side divided by the number of running tasks;
* after the workloads, an idle rtx runner's RSS and CPU.

Results go to ``--out`` (JSON lines, one per DAG run) and the table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg

from bench.common import DEFAULT_ADMIN_URL, active_runners, percentile, sql
from testing.airflow_stack import AirflowStack
from testing.pgcluster import (
    PgCluster,
    create_database,
    drop_database,
    free_port,
    server_answers,
)

HERE = Path(__file__).resolve().parent
DAGS = HERE / "airflow_dags"
WORKLOADS = {
    "fanout_64": "bench_fanout_64",
    "fanout_256": "bench_fanout_256",
    "chain_20": "bench_chain_20",
    "sleep_32": "bench_sleep_32",
    "mixed": "bench_mixed",
}
EXECUTORS = {
    "local": "LocalExecutor",
    "rtx": "runtime_executor.RuntimeExecutor",
    "celery": "CeleryExecutor",
}


def executor_kind(spec: str) -> str:
    """``rtx:RTX_QUEUE_AHEAD=-1`` -> ``rtx``: a variant is an executor plus environment settings."""
    return spec.split(":", 1)[0]


def variant_env(spec: str) -> dict[str, str]:
    """The environment of a variant (``rtx:NAME=VALUE:NAME=VALUE``), for every component it starts."""
    pairs = [p for p in spec.split(":")[1:] if p]
    if any("=" not in p for p in pairs):
        raise ValueError(f"executor variant {spec!r}: settings are NAME=VALUE")
    return dict(p.split("=", 1) for p in pairs)


# RTX_BENCH_RUNNERS runners (2 unless set); RTX_BENCH_RUNNER_ARGS adds runner flags, e.g.
# "--spare-processes 16", or "--slots 32" (the last --slots given wins) with RTX_BENCH_RUNNERS=1
RUNNERS = int(os.environ.get("RTX_BENCH_RUNNERS") or 2)
RUNNER_ARGS = (
    "--slots",
    "16",
    "--cpu",
    "4",
    "--memory",
    "8192",
    *os.environ.get("RTX_BENCH_RUNNER_ARGS", "").split(),
)


# -- processes -----------------------------------------------------------------------------------


def _tree_cpu(root: psutil.Process) -> tuple[float, float]:
    """(root's own CPU-seconds, CPU-seconds of everything under it, reaped children included)."""
    try:
        t = root.cpu_times()
        own = t.user + t.system
        under = t.children_user + t.children_system
        kids = root.children(recursive=True)
    except psutil.Error:
        return 0.0, 0.0
    for kid in kids:
        with contextlib.suppress(psutil.Error):
            k = kid.cpu_times()
            under += k.user + k.system + k.children_user + k.children_system
    return own, under


def _pss_mb(proc: psutil.Process) -> float:
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _busy(before, after) -> float:
    """Share of the host's CPU time that was busy between two psutil.cpu_times() readings."""
    idle = (after.idle + after.iowait) - (before.idle + before.iowait)
    total = sum(after) - sum(before)
    return 100.0 * (1 - idle / total) if total > 0 else 0.0


@dataclass
class Component:
    name: str
    proc: subprocess.Popen
    task_side: bool = False  # its descendants are the executor's task processes


@dataclass
class Deployment:
    executor: str
    parallelism: int
    admin_url: str
    work: Path
    components: list[Component] = field(default_factory=list)
    _extra: list[subprocess.Popen] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return executor_kind(self.executor)

    def start(self) -> None:
        self.db_name = f"rtx_bench_af_{uuid.uuid4().hex[:8]}"
        create_database(self.admin_url, self.db_name)
        db_url = urlsplit(self.admin_url)._replace(path=f"/{self.db_name}").geturl()
        self.db_url = db_url
        home = self.work / f"{self.kind}-{self.db_name}"
        (home / "plugins").mkdir(parents=True)
        shutil.copy(HERE / "api_timing_plugin.py", home / "plugins")
        self.api_log = home / "api-requests"
        extra = {
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "RTX_BENCH_API_LOG": str(self.api_log),
            **variant_env(self.executor),
        }
        if self.kind == "celery":
            redis_port = free_port()
            self._extra.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(redis_port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            extra["AIRFLOW__CELERY__BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            extra["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + db_url.replace(
                "postgresql://", "postgresql+psycopg://"
            )
            extra["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = str(self.parallelism)
        self.stack = AirflowStack(
            home,
            db_url,
            port=free_port(),
            dags_folder=DAGS,
            executor=EXECUTORS[self.kind],
            extra_env=extra,
        )
        self.stack.prepare()
        self.stack.start()
        for name, proc in self.stack.procs.items():
            self.components.append(
                Component(name, proc, task_side=(name == "scheduler" and self.kind == "local"))
            )
        if self.kind == "rtx":
            self._daemon("allocator", [sys.executable, "-m", "allocator", "serve"])
            for i in range(1, RUNNERS + 1):
                self._daemon(
                    f"runner-{i}",
                    [sys.executable, "-m", "runner", "serve", "--name", f"runner-{i}", *RUNNER_ARGS],
                    True,
                )
        elif self.kind == "celery":
            self._daemon(
                "celery-worker", [str(Path(sys.executable).parent / "airflow"), "celery", "worker"], True
            )
        if self.kind == "rtx":
            # a runner registers once its fork server is warm: as in production, where runners
            # are up long before the DAG runs
            deadline = time.monotonic() + 120
            while active_runners(self.db_url) < RUNNERS:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{RUNNERS} rtx runner(s) did not register in 120 s")
                time.sleep(0.5)
        for dag_id in WORKLOADS.values():
            self.stack.wait_for_dag(dag_id, timeout=180)
            self.stack.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def _daemon(self, name: str, argv: list[str], task_side: bool = False) -> None:
        log = open(self.stack.logs_dir / f"{name}.log", "ab")  # noqa: SIM115 - the process owns it
        proc = subprocess.Popen(
            argv, env=self.stack.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.components.append(Component(name, proc, task_side))

    def stop(self) -> None:
        for comp in reversed(self.components):
            if comp.name not in self.stack.procs and comp.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(comp.proc.pid, signal.SIGTERM)
                try:
                    comp.proc.wait(30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(comp.proc.pid, signal.SIGKILL)
                    comp.proc.wait(10)
        self.stack.stop()
        for proc in self._extra:
            proc.terminate()
            proc.wait(10)
        if os.environ.get("RTX_BENCH_KEEP_DB") == "1":  # for a look at the rows afterwards
            print(f"  database {self.db_name} kept", flush=True)
            return
        with contextlib.suppress(Exception):
            drop_database(self.admin_url, self.db_name)

    # -- measuring -----------------------------------------------------------------------------
    def cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for comp in self.components:
            own, under = _tree_cpu(psutil.Process(comp.proc.pid))
            if comp.task_side:
                key = comp.name.split("-")[0] if comp.name.startswith("runner") else comp.name
                out[key] = out.get(key, 0.0) + own
                out["tasks"] = out.get("tasks", 0.0) + under
            else:
                out[comp.name] = out.get(comp.name, 0.0) + own + under
        return out

    def postgres_cpu(self) -> dict[int, float]:
        """CPU-seconds of each Postgres backend serving this deployment's database (those alive now)."""
        out: dict[int, float] = {}
        for (pid,) in self.sql("select pid from pg_stat_activity where datname = current_database()"):
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                out[pid] = t.user + t.system
        return out

    def task_side_pss_mb(self) -> float:
        total = 0.0
        for comp in self.components:
            if comp.task_side:
                with contextlib.suppress(psutil.Error):
                    for kid in psutil.Process(comp.proc.pid).children(recursive=True):
                        if "serve-logs" in " ".join(kid.cmdline()) or "serve_logs" in kid.name():
                            continue
                        total += _pss_mb(kid)
        return total

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def run(self, workload: str, timeout: float = 900) -> dict:
        dag_id = WORKLOADS[workload]
        cpu_before, pg_before = self.cpu(), self.postgres_cpu()
        host_before = psutil.cpu_times()
        wall_before = time.time()
        profilers = self._start_profilers(workload)
        run_id = self.stack.trigger(dag_id)
        peak = (0, 0.0)
        deadline = time.monotonic() + timeout
        while True:
            (state,) = self.sql("select state from dag_run where dag_id=%s and run_id=%s", (dag_id, run_id))[
                0
            ]
            if state in ("success", "failed"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.executor}: {dag_id} still {state} after {timeout}s")
            if workload == "sleep_32":
                (running,) = self.sql(
                    "select count(*) from task_instance where dag_id=%s and run_id=%s and state='running'",
                    (dag_id, run_id),
                )[0]
                if running >= peak[0]:
                    peak = (running, self.task_side_pss_mb())
            time.sleep(0.25)
        wall_after = time.time()
        host_after = psutil.cpu_times()
        cpu_after, pg_after = self.cpu(), self.postgres_cpu()
        self._stop_profilers(profilers)
        tis = self.sql(
            "select extract(epoch from queued_dttm - scheduled_dttm), extract(epoch from start_date - queued_dttm),"
            " extract(epoch from end_date - start_date), state from task_instance where dag_id=%s and run_id=%s",
            (dag_id, run_id),
        )
        (makespan,) = self.sql(
            "select extract(epoch from end_date - start_date) from dag_run where dag_id=%s and run_id=%s",
            (dag_id, run_id),
        )[0]
        n = len(tis)
        cpu = {k: round(cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0), 2) for k in cpu_after}
        # per backend: one that ended during the run takes its CPU with it (a sum over the backends
        # alive at each end went negative when it did); what it spent is not counted
        cpu["postgres"] = round(sum(t - pg_before.get(pid, 0.0) for pid, t in pg_after.items()), 2)
        api = self._api_requests(wall_before, wall_after)

        def pct(values: list, p: float) -> float | None:
            vals = [float(v) for v in values if v is not None]
            return round(percentile(vals, p), 3) if vals else None

        run_times = [float(t[2]) for t in tis if t[2] is not None]
        result = {
            "executor": self.executor,
            "workload": workload,
            "state": state,
            "tasks": n,
            "succeeded": sum(1 for t in tis if t[3] == "success"),
            "makespan_s": round(float(makespan), 3),
            "sched_to_queued_p50": pct([t[0] for t in tis], 50),
            "sched_to_queued_p95": pct([t[0] for t in tis], 95),
            "queued_to_start_p50": pct([t[1] for t in tis], 50),
            "queued_to_start_p95": pct([t[1] for t in tis], 95),
            "run_p50": pct(run_times, 50),
            "run_p95": pct(run_times, 95),
            "overhead_per_task_s": round((float(makespan) - sum(run_times)) / n, 3)
            if workload.startswith("chain")
            else None,
            "cpu_s": cpu,
            "cpu_s_total": round(sum(cpu.values()), 2),
            "host_busy_percent": round(_busy(host_before, host_after), 1),
            "task_side_cpu_s_per_task": round(cpu.get("tasks", 0.0) / n, 3) if n else None,
            "all_cpu_s_per_task": round(sum(cpu.values()) / n, 3) if n else None,
            **api,
        }
        starts = sorted(
            float(t[0])
            for t in self.sql(
                "select extract(epoch from start_date) from task_instance where dag_id=%s and run_id=%s"
                " and start_date is not null",
                (dag_id, run_id),
            )
        )
        result["max_start_gap_s"] = round(max((b - a for a, b in itertools.pairwise(starts)), default=0.0), 3)
        if self.kind == "rtx":
            # rtx's own pickup: allocation inserted (the scheduler's commit) -> task process started
            pickups = [
                float(p[0])
                for p in self.sql(
                    sql(
                        "select extract(epoch from process_started_at - created_at) from {schema}.allocations"
                        " where dag_id=%s and run_id=%s and process_started_at is not null"
                    ),
                    (dag_id, run_id),
                )
            ]
            if pickups:
                result["rtx_pickup_p50_ms"] = round(percentile(pickups, 50) * 1000, 1)
                result["rtx_pickup_p99_ms"] = round(percentile(pickups, 99) * 1000, 1)
            result.update(self._rtx_stages(dag_id, run_id))
        if workload == "sleep_32" and peak[0]:
            result["running_peak"] = peak[0]
            result["pss_mb_per_running_task"] = round(peak[1] / peak[0], 1)
        return result

    def _start_profilers(self, workload: str) -> list[subprocess.Popen]:
        """``RTX_BENCH_PROFILE=scheduler,runner-1,...``: py-spy (collapsed stacks, 100 Hz, the
        process itself, not its children) over each of those components for the workload's run, into the deployment's
        logs folder as ``profile-<executor>-<workload>-<component>.txt``. ``RTX_BENCH_PROFILE_IDLE=1``
        also samples the threads while they sleep or wait (py-spy ``--idle``): where wall time goes;
        ``RTX_BENCH_PROFILE_CHILDREN=1`` the component's child processes too (``--subprocesses``: a
        runner's spares and their task processes)."""
        wanted = {n for n in os.environ.get("RTX_BENCH_PROFILE", "").split(",") if n}
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        procs = []
        for comp in self.components:
            if comp.name in wanted:
                out = self.stack.logs_dir / f"profile-{self.kind}-{workload}-{comp.name}.txt"
                argv = [spy, "record", "--pid", str(comp.proc.pid), "--format", "raw", "--rate", "100"]
                argv += ["--nonblocking", "--output", str(out)]
                if os.environ.get("RTX_BENCH_PROFILE_IDLE") == "1":
                    argv.append("--idle")
                if os.environ.get("RTX_BENCH_PROFILE_CHILDREN") == "1":
                    argv.append("--subprocesses")
                procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return procs

    @staticmethod
    def _stop_profilers(procs: list[subprocess.Popen]) -> None:
        for proc in procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def _rtx_stages(self, dag_id: str, run_id: str) -> dict:
        """Where rtx's queued -> start goes, p50 per stage in ms (one host: one clock for all).

        queued_dttm (scheduler, before its commit) -> created_at (the shim's INSERT, same transaction)
        -> assigned_at (the allocator's placement) -> started_at (the runner's claim) ->
        process_started_at (handed to a spare, pid written) -> start_date (the spare's supervisor,
        right after it forked the task); and after the task: end_date (the task's own last API call)
        -> finished_at (the runner wrote the outcome, which the scheduler's next sync reads)."""
        rows = self.sql(
            sql(
                "select extract(epoch from a.created_at - t.queued_dttm),"
                " extract(epoch from a.assigned_at - a.created_at),"
                " extract(epoch from a.started_at - a.assigned_at),"
                " extract(epoch from a.process_started_at - a.started_at),"
                " extract(epoch from t.start_date - a.process_started_at),"
                " extract(epoch from a.finished_at - t.end_date)"
                " from {schema}.allocations a join task_instance t on t.dag_id = a.dag_id"
                " and t.task_id = a.task_id and t.run_id = a.run_id and t.map_index = a.map_index"
                " and t.try_number = a.try_number where a.dag_id = %s and a.run_id = %s"
                " and a.process_started_at is not null and t.start_date is not null"
                " and a.finished_at is not null and t.end_date is not null"
            ),
            (dag_id, run_id),
        )
        out = {}
        for i, name in enumerate(STAGES):
            values = [float(r[i]) for r in rows if r[i] is not None]
            if values:
                out[f"rtx_stage_{name}_ms"] = round(percentile(values, 50) * 1000, 1)
        return out

    def _api_requests(self, start: float, end: float) -> dict:
        durations: list[float] = []
        errors = 0
        for path in self.api_log.parent.glob(self.api_log.name + ".*"):
            for line in path.read_text().splitlines():
                t, d, status, _ = (line.split(" ", 3) + [""])[:4]
                if start <= float(t) <= end:
                    durations.append(float(d))
                    errors += not status.startswith(("2", "3"))
        if not durations:
            return {"api_requests": 0}
        return {
            "api_requests": len(durations),
            "api_errors": errors,
            "api_mean_ms": round(statistics.mean(durations) * 1000, 1),
            "api_p95_ms": round(percentile(durations, 95) * 1000, 1),
        }

    def runner_idle(self, seconds: float = 10.0) -> dict:
        runners = [c for c in self.components if c.name.startswith("runner")]
        if not runners:
            return {}
        time.sleep(5)  # let the last outcomes and usage samples settle
        procs = [psutil.Process(c.proc.pid) for c in runners]
        before = [p.cpu_times() for p in procs]
        time.sleep(seconds)
        after = [p.cpu_times() for p in procs]
        cpu = [
            ((a.user + a.system) - (b.user + b.system)) / seconds * 100
            for a, b in zip(after, before, strict=True)
        ]
        return {
            "executor": self.executor,
            "workload": "runner_idle",
            "runner_rss_mb": round(max(p.memory_info().rss for p in procs) / 2**20, 1),
            "runner_pss_mb": round(max(_pss_mb(p) for p in procs), 1),
            "runner_tree_pss_mb": round(
                max(_pss_mb(p) + sum(_pss_mb(k) for k in p.children(recursive=True)) for p in procs), 1
            ),
            "runner_cpu_percent": round(max(cpu), 2),
        }


# -- report --------------------------------------------------------------------------------------

ROWS = [
    ("makespan_s", "makespan (s)"),
    ("sched_to_queued_p50", "scheduled -> queued p50 (s)"),
    ("queued_to_start_p50", "queued -> start p50 (s)"),
    ("queued_to_start_p95", "queued -> start p95 (s)"),
    ("run_p50", "task run p50 (s)"),
    ("overhead_per_task_s", "overhead per task (s)"),
    ("task_side_cpu_s_per_task", "task-side CPU-s per task"),
    ("all_cpu_s_per_task", "all CPU-s per task"),
    ("api_requests", "api requests"),
    ("api_mean_ms", "api mean latency (ms)"),
    ("host_busy_percent", "host CPU busy (%)"),
    ("max_start_gap_s", "longest gap between task starts (s)"),
    ("rtx_pickup_p50_ms", "rtx pickup p50 (ms)"),
    ("rtx_pickup_p99_ms", "rtx pickup p99 (ms)"),
    ("pss_mb_per_running_task", "PSS per running task (MB)"),
]
# rtx's queued -> start by stage (Deployment._rtx_stages)
STAGES = ("insert", "placed", "claimed", "handed", "forked", "finished")
ROWS += [(f"rtx_stage_{s}_ms", f"rtx stage {s} p50 (ms)") for s in STAGES]


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    med = statistics.median(values)
    return f"{med:.3g}" if len(values) == 1 else f"{med:.3g} ({values[0]:.3g}-{values[-1]:.3g})"


def table(results: list[dict], executors: list[str]) -> str:
    others = [e for e in executors if e != "local"]
    head = ["workload", "metric", *executors, *(f"{e}/local" for e in others if "local" in executors)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in results)]
    for w in workloads:
        for key, label in ROWS:
            by_exec = {
                e: [r for r in results if r["workload"] == w and r["executor"] == e] for e in executors
            }
            cells = {e: [r[key] for r in rs if r.get(key) is not None] for e, rs in by_exec.items()}
            if not any(cells.values()):
                continue
            row = [w, label, *(_fmt(cells[e]) for e in executors)]
            if "local" in executors:
                for e in others:
                    pairs = [
                        a.get(key) / b.get(key)
                        for a, b in zip(by_exec[e], by_exec["local"], strict=False)
                        if a.get(key) is not None and b.get(key)
                    ]
                    row.append(_fmt(pairs))
            lines.append("| " + " | ".join(row) + " |")
    for r in results:
        if r["workload"] == "runner_idle":
            lines.append(
                f"\nidle runner ({r['executor']}): RSS {r['runner_rss_mb']} MB, PSS {r['runner_pss_mb']} MB "
                f"(with its fork server and spares {r['runner_tree_pss_mb']} MB), CPU {r['runner_cpu_percent']} % of a core"
            )
    cpu_rows = [r for r in results if "cpu_s" in r]
    if cpu_rows:
        lines.append("\nCPU-seconds by component (median over rounds):")
        for w in workloads:
            for e in executors:
                rs = [r["cpu_s"] for r in cpu_rows if r["workload"] == w and r["executor"] == e]
                if rs:
                    keys = sorted({k for c in rs for k in c})
                    parts = ", ".join(f"{k} {statistics.median(c.get(k, 0.0) for c in rs):.1f}" for k in keys)
                    lines.append(f"- {w} / {e}: {parts}")
    return "\n".join(lines)


def celery_available() -> str | None:
    """None when CeleryExecutor can run here, else why not."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    try:
        import airflow.providers.celery  # noqa: F401
    except ImportError:
        return "apache-airflow-providers-celery is not installed (pip install '.[bench]')"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--executors",
        default="local,rtx,celery",
        help="comma-separated; a variant adds settings to every component: rtx:RTX_QUEUE_AHEAD=-1",
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--parallelism", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench-airflow-results.jsonl"))
    parser.add_argument("--keep", action="store_true", help="keep the deployments' folders (logs) for a look")
    args = parser.parse_args()
    executors = [e for e in args.executors.split(",") if e]
    workloads = [w for w in args.workloads.split(",") if w]
    if unknown := {executor_kind(e) for e in executors} - set(EXECUTORS) or set(workloads) - set(WORKLOADS):
        parser.error(f"unknown: {sorted(unknown)}")
    if any(executor_kind(e) == "celery" for e in executors) and (why := celery_available()):
        print(f"CeleryExecutor not run: {why}", flush=True)
        executors = [e for e in executors if executor_kind(e) != "celery"]

    # SIGTERM (a killed make, a CI timeout) unwinds like Ctrl-C, so every deployment is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    admin = os.environ.get("RTX_BENCH_PG_URL", DEFAULT_ADMIN_URL)
    work = Path(tempfile.mkdtemp(prefix="rtx-bench-airflow-"))
    cluster = None
    if not server_answers(admin):
        cluster = PgCluster(work / "pg").start()
        admin = cluster.admin_url
    results: list[dict] = []
    try:
        with args.out.open("a") as out:
            for round_no in range(1, args.runs + 1):
                for executor in executors:
                    dep = Deployment(executor, args.parallelism, admin, work)
                    try:
                        t0 = time.monotonic()
                        dep.start()
                        print(
                            f"round {round_no} {executor}: deployed in {time.monotonic() - t0:.0f}s",
                            flush=True,
                        )
                        for workload in workloads:
                            result = dep.run(workload)
                            result["round"] = round_no
                            results.append(result)
                            out.write(json.dumps(result) + "\n")
                            out.flush()
                            print(
                                f"  {workload}: {result['state']} {result['succeeded']}/{result['tasks']} "
                                f"makespan {result['makespan_s']}s queued->start p50 {result['queued_to_start_p50']}s "
                                f"run p50 {result['run_p50']}s cpu {result['cpu_s']}",
                                flush=True,
                            )
                        if executor_kind(executor) == "rtx":
                            idle = dep.runner_idle()
                            idle["round"] = round_no
                            results.append(idle)
                            out.write(json.dumps(idle) + "\n")
                    finally:
                        dep.stop()
    finally:
        if cluster is not None:
            cluster.destroy()
        if args.keep:
            print(f"deployments kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        f"python -m bench.airflow --executors {','.join(executors)} --workloads {','.join(workloads)} --runs {args.runs}"
    )
    print(table(results, executors))


if __name__ == "__main__":
    main()
