"""The shared code, the allocator and the runner never import Airflow; only the shim does.

Each check runs in a fresh interpreter: the test process itself may already hold Airflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

AIRFLOW_FREE = [
    "runtime_executor",
    "runtime_executor.settings",
    "runtime_executor.resources",
    "runtime_executor.db.gateway",
    "runtime_executor.db.connection",
    "runtime_executor.db.migrate",
    "runtime_executor.status",
    "runtime_executor.status_text",
    "runtime_executor.metrics",
    "runtime_executor.command_line",
    "runtime_executor.serve",
    "runtime_executor.cli",
    "allocator.service",
    "allocator.metrics",
    "allocator.strategies",
    "allocator.cli",
    "runner.service",
    "runner.metrics",
    "runner.task_entry",
    "runner.cli",
]

_REPORT = textwrap.dedent(
    """
    import json, sys
    def airflow_modules():
        return sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow."))
    """
)


def _run(code: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTX_", "AIRFLOW__"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _REPORT + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probe() -> dict:
    """One fresh interpreter imports the modules one by one and records which Airflow modules each
    one added; then it resolves ``runtime_executor.RuntimeExecutor``, the one door to Airflow."""
    return _run(
        f"""
        import importlib
        added = {{}}
        for module in {AIRFLOW_FREE!r}:
            before = set(airflow_modules())
            importlib.import_module(module)
            added[module] = sorted(set(airflow_modules()) - before)

        import runtime_executor
        before_lazy = airflow_modules()
        cls = runtime_executor.RuntimeExecutor
        after_lazy = airflow_modules()
        from airflow.executors.base_executor import BaseExecutor
        import runtime_executor.executor as shim
        print(json.dumps({{
            "added": added,
            "before_lazy": before_lazy,
            "after_lazy": "airflow.executors.base_executor" in after_lazy,
            "name": f"{{cls.__module__}}.{{cls.__qualname__}}",
            "is_shim": cls is shim.RuntimeExecutor,
            "is_executor": issubclass(cls, BaseExecutor),
        }}))
        """
    )


@pytest.mark.parametrize("module", AIRFLOW_FREE)
def test_module_does_not_import_airflow(probe, module):
    added = probe["added"][module]
    assert added == [], f"importing {module} imported {added[:5]}"


def test_allocator_imports_with_airflow_not_installed():
    """The allocator host may not have Airflow at all: block the package and import everything."""
    modules = [m for m in AIRFLOW_FREE if not m.startswith("runner")]
    result = _run(
        f"""
        import importlib, importlib.abc

        class NoAirflow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "airflow" or name.startswith("airflow."):
                    raise ModuleNotFoundError(f"No module named {{name!r}}")
                return None

        sys.meta_path.insert(0, NoAirflow())
        for module in {modules!r}:
            importlib.import_module(module)
        from allocator.strategies import get_strategy
        get_strategy("EvenSpreadStrategy")
        print(json.dumps({{"airflow": airflow_modules()}}))
        """
    )
    assert result["airflow"] == []


def test_runtime_executor_resolves_lazily_and_then_imports_airflow(probe):
    """Going through the lazy attribute does import Airflow (which also proves the probe would see a
    module that broke the boundary)."""
    assert probe["before_lazy"] == []
    assert probe["after_lazy"] is True
    assert probe["name"] == "runtime_executor.executor.RuntimeExecutor"
    assert probe["is_shim"] is True
    assert probe["is_executor"] is True


def test_unknown_attribute_of_the_package_is_an_attribute_error():
    import runtime_executor

    with pytest.raises(AttributeError, match="NoSuchThing"):
        runtime_executor.NoSuchThing  # noqa: B018
