"""rtx: a resource-aware executor for Apache Airflow 3.

``runtime_executor.RuntimeExecutor`` is resolved lazily, so importing this package (the allocator,
the runner and the CLI do) never imports Airflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime_executor.resources import runtime_config

if TYPE_CHECKING:
    from runtime_executor.executor import RuntimeExecutor

__all__ = ["RuntimeExecutor", "runtime_config"]


def __getattr__(name: str) -> Any:
    if name == "RuntimeExecutor":
        from runtime_executor.executor import RuntimeExecutor

        return RuntimeExecutor
    raise AttributeError(f"module 'runtime_executor' has no attribute {name!r}")
