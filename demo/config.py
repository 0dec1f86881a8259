"""What the demo starts and where: one place for its fixed choices."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout: .demo lives there by default
DAGS = Path(__file__).resolve().parent / "dags"
DAG_ID = "rtx_example"
DEFAULT_PORT = 8080
LOGIN = ("admin", "admin")
DB_NAME = DB_USER = "airflow"
STATUS_PAGE = "/plugin/executor-status"
RUNNER_DRAIN_TIMEOUT = 30  # seconds a runner waits for its running tasks on SIGTERM
RUNNERS = (
    ("demo-small", ("--slots", "4", "--cpu", "2", "--memory", "2048")),
    (
        "demo-large",
        ("--slots", "8", "--cpu", "4", "--memory", "4096", "--queue", "default", "--queue", "heavy"),
    ),
)
# stop order: runners first, to drain while the api-server still takes their tasks' last reports
STOP_STAGES = (
    (("runner",), RUNNER_DRAIN_TIMEOUT + 15),
    (("allocator", "scheduler", "dag-processor", "api-server"), 30),
)
