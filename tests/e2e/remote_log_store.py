"""A remote task log for tests, with no network: Airflow's ``RemoteLogIO`` contract over a folder
that stands for the remote store (``$AIRFLOW_HOME/remote-log-store``).

Airflow itself loads it: ``[logging] logging_config_class = tests.e2e.remote_log_store.LOGGING_CONFIG``
makes this module's ``REMOTE_TASK_LOG`` the remote task log of every component (the task supervisor
uploads through it, the api-server reads through it, rtx's shim uploads through it). It behaves like
the S3 one with ``delete_local_logs``: an upload appends to what the store holds, then removes the
local copy, so a log the api-server shows came from the store.
"""

from __future__ import annotations

import os
from copy import deepcopy
from pathlib import Path
from typing import Any

from airflow.config_templates.airflow_local_settings import BASE_LOG_FOLDER, DEFAULT_LOGGING_CONFIG

LOGGING_CONFIG = deepcopy(DEFAULT_LOGGING_CONFIG)
SOURCE = "remote-log-store"


class FolderRemoteLogIO:
    processors: tuple = ()

    def __init__(self, remote_base: Path, base_log_folder: Path) -> None:
        self.remote_base = remote_base
        self.base_log_folder = base_log_folder

    def upload(self, path: os.PathLike | str, ti: Any = None) -> None:
        path = Path(path)
        local = path if path.is_absolute() else self.base_log_folder / path
        if not local.is_file():
            return
        target = self.remote_base / local.relative_to(self.base_log_folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as out:
            out.write(local.read_text(encoding="utf-8"))
        local.unlink()

    def read(self, relative_path: str, ti: Any) -> tuple[list[str], list[str] | None]:
        target = self.remote_base / relative_path
        if not target.is_file():
            return [], None
        return [f"{SOURCE}: {target}"], [target.read_text(encoding="utf-8")]


REMOTE_TASK_LOG = FolderRemoteLogIO(
    Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "remote-log-store", Path(BASE_LOG_FOLDER)
)
