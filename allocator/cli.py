"""``rtx-allocator serve``."""

from __future__ import annotations

import click

from runtime_executor.daemon import (
    check_database,
    common_options,
    fail,
    serve_until_signal,
    settings_from_cli,
)


@click.group()
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
@click.option("--batch-size", "allocator_batch_size", type=int, default=None, help="Requests claimed per queue and pass.")
@click.option("--poll-interval", "allocator_poll_interval", type=float, default=None, help="Seconds between polls when no NOTIFY arrives.")
@click.option("--heartbeat-interval", type=float, default=None, help="Seconds between rescue passes (runner lease checks).")
@click.option("--unschedulable-timeout", type=float, default=None, help="Seconds before an unschedulable request fails.")
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
    serve_until_signal(allocator.start, allocator.stop)
