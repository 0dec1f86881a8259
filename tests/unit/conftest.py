"""Fixtures for unit tests: an environment with no rtx or Airflow settings leaking in."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

# Everything that can feed a setting: rtx's own variables, Airflow's section for us, Airflow's
# database connection (the default database_url) and the allocator's legacy variable.
_SETTING_PREFIXES = ("RTX_", "AIRFLOW__RUNTIME_EXECUTOR__", "AIRFLOW__DATABASE__")
_SETTING_NAMES = ("AIRFLOW__CORE__SQL_ALCHEMY_CONN", "AIRFLOW_CONFIG", "ALLOCATOR_STRATEGY")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from the outside world; ``AIRFLOW_HOME`` is an empty temporary folder (returned)."""
    for name in list(os.environ):
        if name.startswith(_SETTING_PREFIXES) or name in _SETTING_NAMES:
            monkeypatch.delenv(name)
    home = tmp_path / "airflow_home"
    home.mkdir()
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    return home


@pytest.fixture
def write_cfg(clean_env: Path) -> Callable[..., Path]:
    """Write an airflow.cfg (default: ``$AIRFLOW_HOME/airflow.cfg``) and return its path."""

    def write(text: str, path: Path | None = None) -> Path:
        target = path or clean_env / "airflow.cfg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    return write
