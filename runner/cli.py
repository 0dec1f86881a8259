"""``rtx-runner serve``."""

from __future__ import annotations

import os

import click
import psutil

from runtime_executor.command_line import (
    CommandGroup,
    check_database,
    common_options,
    fail,
    settings_from_cli,
)
from runtime_executor.metrics import serve_metrics
from runtime_executor.resources import BadResourceRequest, parse_cpu, parse_memory_mb
from runtime_executor.serve import loops_healthy, serve_until_signal
from runtime_executor.settings import ConfigError, validate_fencing


@click.group(cls=CommandGroup)
def main() -> None:
    """rtx runner: runs the tasks the allocator assigns to it."""


@main.command()
@common_options
@click.option(
    "--slots", type=click.IntRange(1, 100000), default=16, show_default=True, help="Concurrency slots."
)
@click.option("--cpu", default=None, help="Cores to offer (default: cores of the host).")
@click.option(
    "--memory",
    default=None,
    help="Memory to offer in MB, or with a unit: 8192, 8GiB (default: RAM of the host).",
)
@click.option("--queue", "queues", multiple=True, help="Queue to serve (repeatable; default: default).")
@click.option(
    "--name", default=None, help="Display name (default host:pid). The id is fresh for every process."
)
@click.option(
    "--execution-api-url",
    default=None,
    help="Airflow Execution API (default: Airflow's [core] execution_api_server_url).",
)
@click.option("--heartbeat-interval", type=float, default=None, help="Seconds between lease renewals.")
@click.option(
    "--lease-timeout", type=float, default=None, help="Seconds without a heartbeat before the runner is lost."
)
@click.option(
    "--drain-timeout",
    type=float,
    default=None,
    help="Seconds SIGTERM waits for running tasks before stopping them.",
)
@click.option(
    "--kill-grace",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds between SIGTERM and SIGKILL when the runner stops a task (default 5). Also RTX_KILL_GRACE.",
)
@click.option(
    "--spare-processes",
    type=click.IntRange(0, 64),
    default=2,
    show_default=True,
    help="Warm task processes kept forked ahead of time (a task starts with one pipe write).",
)
@click.option(
    "--tasks-per-process",
    type=click.IntRange(min=1),
    default=None,
    help="Tasks one warm task process runs in turn, as LocalExecutor's workers do, before it is retired "
    "(also retired when its memory grew past 256 MB); 1 = a process per task. Always 1 with --isolation cgroup. "
    "Default 100. Also RTX_TASKS_PER_PROCESS.",
)
@click.option(
    "--dag-cache/--no-dag-cache",
    default=None,
    help="A warm task process parses each DAG file once for the tasks it runs in turn, and parses again when a "
    "file the parse read changed or after 60 s (runner/dag_cache.py); --no-dag-cache: every task parses its own "
    "DAG file, as in Airflow's own executors. Default on. Also RTX_DAG_CACHE.",
)
@click.option(
    "--poll-interval",
    "runner_poll_interval",
    type=float,
    default=None,
    help="Seconds between polls when no NOTIFY arrives.",
)
@click.option(
    "--usage-interval",
    type=float,
    default=None,
    help="Seconds between samples of each task's CPU and memory (default 5). Also RTX_USAGE_INTERVAL.",
)
@click.option(
    "--enforce-memory/--no-enforce-memory",
    default=None,
    help="Stop a task whose memory passes its reservation by --memory-margin (default off: only warn, in the "
    "runner's log and the task's own log). Also RTX_ENFORCE_MEMORY.",
)
@click.option(
    "--memory-margin",
    type=click.FloatRange(min=0),
    default=None,
    help="Percent over its memory reservation a task may use before --enforce-memory stops it, and the "
    "headroom of its hard limit with --isolation cgroup (default 10). Also RTX_MEMORY_MARGIN.",
)
@click.option(
    "--isolation",
    type=click.Choice(["none", "cgroup"]),
    default=None,
    help="cgroup: run each task in a cgroup of its own, with a hard memory limit (reservation + --memory-margin) "
    "and a CPU weight (or quota, --cpu-limit); usage and OOM kills read from it (docs/isolation.md). Default none. "
    "Also RTX_ISOLATION.",
)
@click.option(
    "--cgroup-root",
    default=None,
    help="With --isolation cgroup: the cgroup (a path as in /proc/self/cgroup, e.g. /rtx) task cgroups go under "
    "(default: the runner's own cgroup). Also RTX_CGROUP_ROOT.",
)
@click.option(
    "--cpu-limit/--no-cpu-limit",
    default=None,
    help="With --isolation cgroup: also cap each task at its CPU request (a quota of request x period), not only "
    "weight it (default off). Also RTX_CPU_LIMIT.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics (capacity, reserved and used resources, pickup latency, outcomes; see "
    "docs/metrics.md) on this port at /metrics. Default 0 = off. Also RTX_METRICS_PORT.",
)
@click.option(
    "--metrics-host",
    default=None,
    help="Address the metrics server binds to (default 127.0.0.1). Also RTX_METRICS_HOST.",
)
@click.option(
    "--serve-logs/--no-serve-logs",
    default=False,
    envvar="RTX_SERVE_LOGS",
    show_default=True,
    help="Serve task logs on Airflow's [logging] worker_log_server_port for the api-server (as Celery workers "
    "do), when it cannot read this host's log folder. One runner per host is enough. Also RTX_SERVE_LOGS.",
)
def serve(
    slots, cpu, memory, queues, name, execution_api_url, spare_processes, serve_logs, **options
) -> None:
    """Run assigned tasks until SIGTERM, then drain."""
    from runner.service import Capacity, Runner

    settings = settings_from_cli(**options)
    try:
        validate_fencing(settings)
    except ConfigError as exc:
        fail(str(exc))
    try:
        capacity = Capacity(
            slots=slots,
            cpu=parse_cpu(cpu, key="--cpu") if cpu is not None else float(os.cpu_count() or 1),
            memory_mb=parse_memory_mb(memory, key="--memory")
            if memory is not None
            else psutil.virtual_memory().total // 2**20,
        )
    except BadResourceRequest as exc:
        fail(str(exc))
    check_database(settings, "rtx-runner")
    # No database credentials reach a task process: dropped from the runner's own environment before
    # its fork server (which every task is forked from) starts. The settings already hold what we need.
    from runner.task_entry import drop_database_env

    drop_database_env(os.environ, settings.task_env_allow)
    os.environ["RTX_DAG_CACHE"] = "1" if settings.dag_cache else "0"  # read by the fork server (task_process)
    isolation = None
    if settings.isolation == "cgroup":  # before the fork server starts (v2 may move the runner)
        from runner.cgroups import CgroupError, open_isolation

        try:
            isolation = open_isolation(
                settings.cgroup_root, memory_margin=settings.memory_margin, cpu_limit=settings.cpu_limit
            )
        except (CgroupError, OSError) as exc:
            fail(str(exc))
    runner = Runner(
        settings,
        capacity,
        list(queues) or ["default"],
        name=name,
        server_url=execution_api_url,
        spare_processes=spare_processes,
        isolation=isolation,
    )
    try:
        serve_metrics(runner.metrics, settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        if isolation is not None:
            isolation.close()
        fail(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc}")
    try:
        runner.start()
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback
        if isolation is not None:
            isolation.close()
        fail(f"runner could not start: {exc}")
    log_server = None
    if serve_logs:
        from runner.log_server import LogServer

        log_server = LogServer()

    def start() -> None:
        if log_server is not None:
            log_server.start()

    def stop() -> None:
        try:
            runner.drain_and_stop()
        finally:
            if log_server is not None:
                log_server.stop()  # after the drain: logs of finishing tasks stay readable

    # systemd watchdog: renewed only while every loop is alive and recently succeeded
    healthy = loops_healthy(
        runner.loops,
        stale_after=3 * settings.lease_timeout,
    )
    serve_until_signal(start, stop, healthy)
