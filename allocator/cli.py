"""``rtx-allocator serve``."""

from __future__ import annotations

import click

from runtime_executor.command_line import (
    CommandGroup,
    check_database,
    common_options,
    fail,
    settings_from_cli,
)
from runtime_executor.metrics import serve_metrics
from runtime_executor.serve import loops_healthy, serve_until_signal


@click.group(cls=CommandGroup)
def main() -> None:
    """rtx allocator: places task allocations on runners."""


@main.command()
@common_options
@click.option(
    "--strategy",
    envvar="ALLOCATOR_STRATEGY",
    default=None,
    help="EvenSpreadStrategy (default) or MaxPackingStrategy. Also ALLOCATOR_STRATEGY / RTX_STRATEGY.",
)
@click.option(
    "--batch-size",
    "allocator_batch_size",
    type=int,
    default=None,
    help="Requests claimed per queue and pass.",
)
@click.option(
    "--poll-interval",
    "allocator_poll_interval",
    type=float,
    default=None,
    help="Seconds between polls when no NOTIFY arrives.",
)
@click.option(
    "--heartbeat-interval",
    type=float,
    default=None,
    help="Seconds between rescue passes (runner lease checks).",
)
@click.option(
    "--unschedulable-timeout", type=float, default=None, help="Seconds before an unschedulable request fails."
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics (queue depth, placement latency, rescues; see docs/metrics.md) on "
    "this port at /metrics. Default 0 = off. Also RTX_METRICS_PORT.",
)
@click.option(
    "--metrics-host",
    default=None,
    help="Address the metrics server binds to (default 127.0.0.1). Also RTX_METRICS_HOST.",
)
def serve(**options) -> None:
    """Place unassigned allocations until SIGTERM."""
    from allocator.service import Allocator
    from allocator.strategies import get_strategy

    settings = settings_from_cli(**options)
    try:
        get_strategy(settings.strategy)
    except ValueError as exc:
        fail(str(exc))
    check_database(settings, "rtx-allocator")
    allocator = Allocator(settings)
    try:
        serve_metrics(allocator.metrics, settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        fail(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc}")
    # systemd watchdog: renewed only while every loop is alive and recently succeeded
    healthy = loops_healthy(
        [allocator.placement, allocator.upkeep, allocator.prune, allocator.listener.loop],
        stale_after=3 * settings.lease_timeout,
    )
    serve_until_signal(allocator.start, allocator.stop, healthy)
