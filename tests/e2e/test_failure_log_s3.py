"""With Airflow's own S3 remote logging (``S3RemoteLogIO`` of the amazon provider), the reason of a
failure rtx decides is uploaded to S3 and the REST API reads it back from there.

S3 is a local moto server (a real HTTP S3 API in a subprocess: no network). Local copies are
deleted after upload (``delete_local_logs``), so what the API returns came from the bucket. Needs
``apache-airflow-providers-amazon`` and ``moto[server]``, which rtx does not depend on: without them
this module is skipped, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testing.pgcluster import free_port
from tests.e2e.test_failure_log import RTX_LINE, _log_json, _sources, _wait_rtx_line, wait_runners
from tests.support.daemons import wait_for

pytest.importorskip(
    "airflow.providers.amazon", reason="S3 remote logging needs apache-airflow-providers-amazon"
)
pytest.importorskip("moto.server", reason="the local S3 needs moto[server]")

pytestmark = pytest.mark.e2e

BUCKET = "rtx-task-logs"
MOTO_PORT = free_port()
ENDPOINT = f"http://127.0.0.1:{MOTO_PORT}"
STACK_ENV = {
    "RTX_UNSCHEDULABLE_TIMEOUT": "3",
    "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
    "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{BUCKET}/logs",
    "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "rtx_s3",
    "AIRFLOW__LOGGING__DELETE_LOCAL_LOGS": "True",
    "AIRFLOW_CONN_RTX_S3": json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": ENDPOINT, "region_name": "us-east-1"},
        }
    ),
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[str]:
    """A moto S3 server with the log bucket, before the stack starts (fixture order)."""
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(MOTO_PORT)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: _answers(), 30, interval=0.2, what="moto S3 server")
        httpx.put(f"{ENDPOINT}/{BUCKET}").raise_for_status()
        yield ENDPOINT
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _answers() -> bool:
    try:
        httpx.get(ENDPOINT + "/", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def _object(key: str) -> str:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def test_failure_reasons_are_uploaded_to_s3(s3, stack):
    wait_runners(stack, "runner-small", "runner-large")
    run_id = stack.airflow.trigger("rtx_failure_log")
    assert stack.airflow.wait_for_run("rtx_failure_log", run_id, 180) == "failed", stack.logs()
    relative = f"dag_id=rtx_failure_log/run_id={run_id}/task_id={{}}/attempt=1.log"
    for task_id, shown in (("bad_request", "lots"), ("unschedulable", "unschedulable for 3 s")):
        body, line = _wait_rtx_line(stack, "rtx_failure_log", run_id, task_id)
        assert shown in line["event"], line
        key = "logs/" + relative.format(task_id)
        assert f"s3://{BUCKET}/{key}" in _sources(body), _sources(body)
        assert RTX_LINE in _object(key)
        assert not (stack.airflow.home / "logs" / relative.format(task_id)).exists()  # uploaded and deleted
    # the task that ran was uploaded to the same bucket by its own supervisor, without an rtx line
    fine = wait_for(
        lambda: (
            f"s3://{BUCKET}/" in (text := json.dumps(_log_json(stack, "rtx_failure_log", run_id, "fine")))
            and text
        ),
        60,
        interval=0.5,
        what="the log of the task that ran, in S3",
    )
    assert "fine-task-ran" in fine and RTX_LINE not in fine
