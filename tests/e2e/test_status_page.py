"""The Executor Status page with real everything: Airflow 3.3 (api-server with the rtx plugin,
scheduler, dag-processor, real logins), Postgres, the allocator, two runners, and a real headless
Chromium that logs in through Airflow's login form.

The runners run the fake task (``tests.support.fake_task``), and the allocations are inserted
straight into the table, so the state the page shows is known and stable: five allocations run
for the whole module, one asks for more CPU than any runner has, one waits on a queue nobody
serves.

``RTX_UPDATE_SCREENSHOT=1`` copies the screenshot of the page inside Airflow to
``docs/img/status-page.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from runtime_executor.db.connection import Database
from runtime_executor.settings import Settings
from testing.airflow_stack import AirflowStack
from testing.pgcluster import create_database, drop_database, free_port
from tests.conftest import _with_db
from tests.e2e.browser import Browser, require_chromium
from tests.support.allocations import insert_allocations
from tests.support.daemons import Daemons, query, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DAGS = Path(__file__).parent / "dags"
WORKLOAD_TOKEN = "wl-secret-" + secrets.token_hex(8)  # stands for the task's JWT in a real workload
SLEEP = {"sleep": 300, "token": WORKLOAD_TOKEN}
XSS_TASK = '<img src=x onerror="window.__xss=1">'
UNFIT_REASON_RE = re.compile(r"cpu|fit", re.I)


class Env:
    def __init__(
        self, airflow: AirflowStack, db: Database, daemons: Daemons, password: str, tmp: Path, admin_url: str
    ) -> None:
        self.admin_url = admin_url
        self.airflow = airflow
        self.db = db
        self.daemons = daemons
        self.db_password = password
        self.tmp = tmp

    @property
    def base_url(self) -> str:
        return self.airflow.base_url

    def logs(self) -> str:
        parts = [self.daemons.logs()[-8000:]]
        parts += [
            f"===== {c} =====\n{self.airflow.component_log(c)[-5000:]}" for c in ("api-server", "scheduler")
        ]
        return "\n".join(parts)


def insert(db: Database, task_id: str, *, dag_id: str = "status_demo", map_index: int = -1, **kw: Any) -> str:
    """One allocation with a chosen task id (``insert_allocations`` numbers its own)."""
    allocation_id = str(uuid.uuid4())
    row = dict(
        id=allocation_id,
        kind="task",
        dag_id=dag_id,
        task_id=task_id,
        run_id="manual__2026-01-01T00:00:00+00:00",
        map_index=map_index,
        try_number=1,
        callback_id=None,
        queue="default",
        priority_weight=1,
        slots=1,
        cpu=0.0,
        memory_mb=0,
        state="unassigned",
        workload=json.dumps(SLEEP),
        scheduler_job_id=None,
        reason=None,
    )
    row.update(kw)
    with db.transaction() as gw:
        gw.insert_allocation(**row)
    return allocation_id


def states(env: Env) -> dict[str, tuple[str, str | None]]:
    rows = query(
        env.airflow.database_url,
        "SELECT task_id, state, unschedulable_reason FROM runtime_executor.allocations WHERE dag_id LIKE 'status%%'",
    )
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture(scope="module")
def env(pg_admin_url, tmp_path_factory) -> Iterator[Env]:
    require_chromium()  # fail before the minute of start-up, not after
    started = time.monotonic()
    name = f"rtx_status_{uuid.uuid4().hex[:10]}"
    password = "pw-" + secrets.token_hex(12)  # must never show up on the page or in the JSON
    admin = urlsplit(_with_db(pg_admin_url, name))
    db_url = admin._replace(netloc=f"{name}:{password}@{admin.hostname}:{admin.port or 5432}").geturl()

    tmp = tmp_path_factory.mktemp("status-page")
    airflow = AirflowStack(tmp / "airflow", db_url, port=free_port(), dags_folder=DAGS, all_admins=False)
    daemons = Daemons(db_url, tmp)
    db = Database(Settings(database_url=db_url), "rtx-status-test")
    e = Env(airflow, db, daemons, password, tmp, _with_db(pg_admin_url, name))
    try:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
        create_database(pg_admin_url, name)
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" OWNER TO "{name}"')
        airflow.prepare()
        print(f"prepared in {time.monotonic() - started:.1f}s")
        fast = {"RTX_DRAIN_TIMEOUT": "1", "RTX_HEARTBEAT_INTERVAL": "1", "RTX_LEASE_TIMEOUT": "10"}
        daemons.allocator(**fast)
        daemons.runner("--slots", "4", "--cpu", "2", "--memory", "2048", name="runner-small", **fast)
        daemons.runner("--slots", "8", "--cpu", "4", "--memory", "4096", name="runner-large", **fast)
        # placed and started while the api-server warms up
        insert_allocations(db, 3, workload=SLEEP, slots=1, cpu=0.5, memory_mb=256, dag_id="status_demo")
        insert(db, "mapped_task", map_index=3, slots=2, cpu=1.0, memory_mb=1024)
        insert(db, XSS_TASK, priority_weight=0)  # listed last
        insert(db, "needs_64_cores", cpu=64.0)
        insert(db, "gpu_job", queue="gpu", memory_mb=512)
        # the api-server serves the page: it starts first, with the CPU to itself
        airflow.start(("api-server",))
        print(f"api-server healthy after {time.monotonic() - started:.1f}s")
        airflow.start(("scheduler", "dag-processor"))  # they import the plugin too
        wait_for(
            lambda: (
                (s := states(e))
                and all(
                    s.get(t, ("",))[0] == "running"
                    for t in ("task_0", "task_1", "task_2", "mapped_task", XSS_TASK)
                )
                and s["needs_64_cores"][1]
                and s["gpu_job"][1]
            ),
            timeout=60,
            interval=0.5,
            what="allocations running and the unschedulable ones marked",
        )
        print(f"status-page stack ready in {time.monotonic() - started:.1f}s")
        yield e
    except Exception:
        print(e.logs())
        raise
    finally:
        # signal everything at once, then wait for each: a shorter teardown
        for daemon in daemons.started:
            daemon.send(signal.SIGTERM)
        for proc in airflow.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        daemons.stop_all()
        airflow.stop()
        db.close()
        drop_database(pg_admin_url, name)
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def get_status(env: Env, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{env.base_url}/runtime-executor/api/status", headers=headers, timeout=20, **kw)


# -- JSON -------------------------------------------------------------------------------------------
def test_json_needs_a_login(env):
    response = get_status(env)
    assert response.status_code == 401, response.text
    assert get_status(env, "not-a-jwt").status_code in (401, 403)


@pytest.mark.parametrize("user", ["viewer", "admin"])
def test_json_shows_runners_running_and_unassigned_allocations(env, user):
    response = get_status(env, env.airflow.token(user))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.text
    # no secret: neither the workload (with its token) nor the database password
    assert "token" not in body
    assert WORKLOAD_TOKEN not in body
    assert env.db_password not in body

    data = response.json()
    runners = {r["name"]: r for r in data["runners"]}
    assert set(runners) == {"runner-small", "runner-large"}
    assert all(r["state"] == "active" for r in runners.values())
    assert runners["runner-large"]["capacity"] == {"slots": 8, "cpu": 4.0, "memory_mb": 4096}
    running = {a["task_id"]: a for r in data["runners"] for a in r["allocations"]}
    assert {"task_0", "task_1", "task_2", "mapped_task", XSS_TASK} <= set(running)
    assert all(
        running[t]["state"] == "running" and running[t]["running_s"] >= 0 for t in ("task_0", "mapped_task")
    )
    assert running["mapped_task"]["request"] == {"slots": 2, "cpu": 1.0, "memory_mb": 1024}
    # reservations add up: 3 x (1 slot, 0.5 cpu, 256 MB) + (2, 1.0, 1024) + (1, 0, 0)
    assert data["totals"]["slots"] == {"capacity": 12, "reserved": 6, "free": 6}
    assert data["totals"]["cpu"]["reserved"] == pytest.approx(2.5)
    assert data["totals"]["memory_mb"]["reserved"] == 3 * 256 + 1024

    unassigned = {a["task_id"]: a for a in data["unassigned"]}
    assert set(unassigned) == {"needs_64_cores", "gpu_job"}
    assert UNFIT_REASON_RE.search(unassigned["needs_64_cores"]["unschedulable_reason"])
    assert "gpu" in unassigned["gpu_job"]["unschedulable_reason"]
    assert data["queues"]["gpu"]["runners"] == 0 and data["queues"]["gpu"]["unassigned"] == 1

    # every allocation links to its task instance in the Airflow UI (mapped ones to their map index)
    run = "manual__2026-01-01T00%3A00%3A00%2B00%3A00"
    assert running["task_0"]["ui_path"] == "/dags/status_demo/runs/manual__1/tasks/task_0"
    assert running["mapped_task"]["ui_path"] == f"/dags/status_demo/runs/{run}/tasks/mapped_task/mapped/3"
    assert unassigned["gpu_job"]["ui_path"] == f"/dags/status_demo/runs/{run}/tasks/gpu_job"
    assert "<" not in running[XSS_TASK]["ui_path"]


def test_json_survives_a_dropped_connection(env):
    token = env.airflow.token("viewer")
    assert get_status(env, token).status_code == 200
    killed = query(
        env.admin_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'rtx-status-page'",
    )
    assert killed and all(k[0] for k in killed)  # the one kept connection per api-server worker
    response = get_status(env, token)
    assert response.status_code == 200, response.text  # reconnected at once, no error shown


def test_page_menu_entry_and_icon(env):
    page = httpx.get(f"{env.base_url}/runtime-executor/", timeout=20)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "frame-ancestors 'self'" in csp
    assert 'fetch("api/status"' in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//|<link""", page.text), "no external assets"
    icon = httpx.get(f"{env.base_url}/runtime-executor/icon.svg", timeout=20)
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")

    plugins = env.airflow.api("GET", "/api/v2/plugins").json()["plugins"]
    ours = next(p for p in plugins if p["name"] == "runtime_executor")
    assert len(ours["external_views"]) == 1
    assert (
        ours["external_views"][0]
        | {
            "name": "Executor Status",
            "href": "/runtime-executor/",
            "icon": "/runtime-executor/icon.svg",
            "url_route": "executor-status",
            "category": "browse",
            "destination": "nav",
        }
        == ours["external_views"][0]
    )
    assert ours["fastapi_apps"][0]["url_prefix"] == "/runtime-executor"
    errors = env.airflow.api("GET", "/api/v2/plugins/importErrors").json()
    assert errors["total_entries"] == 0, errors
    for component in ("scheduler", "dag-processor"):  # they load the plugin and keep running
        assert env.airflow.procs[component].poll() is None, env.airflow.component_log(component)[-3000:]
        assert "Failed to import plugin" not in env.airflow.component_log(component), component


def test_plugin_import_is_cheap_links_follow_a_sub_path_errors_stay_vague(env):
    """What the scheduler, the dag-processor and the CLI do (load the plugins, read the menu entries)
    imports nothing but the plugin class; with ``[api] base_url`` under a path, the menu entry,
    its icon and the task links carry the prefix; a failed read tells page viewers the cause but
    not the database's address or credentials. (One fresh interpreter for all three: Airflow's
    import is the slow part.)"""
    code = textwrap.dedent(
        """
        import json, sys
        from airflow import plugins_manager as pm
        pm.ensure_plugins_loaded()
        if hasattr(pm, "_get_ui_plugins"):  # 3.2, 3.3
            views, _ = pm._get_ui_plugins()
        else:  # 3.1 keeps them in module globals
            pm.initialize_ui_plugins()
            views = pm.external_views
        loaded = sorted(m for m in sys.modules if m.startswith("runtime_executor.plugin"))
        from runtime_executor.plugin import base_url_path
        from runtime_executor.plugin.app import public_error, ui_path
        view = next(v for v in views if v["url_route"] == "executor-status")
        a = dict(kind="task", dag_id="d", run_id="r 1", task_id="t", map_index=2)
        import psycopg
        from runtime_executor.db.connection import DatabaseUnavailable
        errors = [
            DatabaseUnavailable("cannot connect to postgresql://rtx:***@db.internal:5432/airflow: timeout"),
            psycopg.errors.UndefinedTable("relation does not exist"),
            RuntimeError("postgresql://u:secret@db.internal/db"),
        ]
        messages = [public_error(e) for e in errors]
        print(json.dumps([loaded, view["href"], view["icon"], ui_path(a, base_url_path("")), messages]))
        """
    )
    env_vars = env.airflow.env() | {"AIRFLOW__API__BASE_URL": "https://proxy.example/airflow/"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env_vars, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    *found, messages = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == [
        ["runtime_executor.plugin"],
        "/airflow/runtime-executor/",
        "/airflow/runtime-executor/icon.svg",
        "/airflow/dags/d/runs/r%201/tasks/t/mapped/2",
    ]
    assert "cannot be reached" in messages[0]
    assert "rtx db migrate" in messages[1]
    assert "RuntimeError" in messages[2]
    assert not any("db.internal" in m or "secret" in m or "rtx:" in m for m in messages), messages


# -- the page in a real browser -------------------------------------------------------------------
def _frame(browser: Browser):
    handle = browser.page.wait_for_selector('iframe[title="Executor Status"]')
    frame = handle.content_frame()
    assert frame is not None
    return frame


def _wait_text(target, text: str, timeout: float = 20_000) -> None:
    target.locator("#content").get_by_text(text, exact=False).first.wait_for(timeout=timeout)


def _assert_rendered(target) -> None:
    for text in ("runner-small", "runner-large", "task_0", "mapped_task [3]", "needs_64_cores", "gpu_job"):
        _wait_text(target, text)
    content = target.locator("#content").inner_text()
    unassigned = target.locator("#unassigned").inner_text()
    assert "Unschedulable" in unassigned
    assert UNFIT_REASON_RE.search(unassigned.split("needs_64_cores", 1)[1])
    assert "gpu" in unassigned.split("gpu_job", 1)[1]
    # user input is shown as text, never as markup
    assert XSS_TASK in content
    assert target.evaluate("() => window.__xss === undefined && !document.querySelector('#content img')")
    for section in ("Unassigned Allocations", "Resources", "Runners", "Allocations"):
        assert section in target.locator("body").inner_text()
    assert "active" in target.locator("#runners").inner_text()


def test_page_in_the_airflow_ui_and_standalone(env):
    update = os.environ.get("RTX_UPDATE_SCREENSHOT") == "1"
    shots = env.tmp / "screenshots"
    with Browser(env.tmp / "chromium-profile", height=1100) as browser:
        page = browser.page
        try:
            # not logged in: the page says so instead of showing nothing
            page.goto(f"{env.base_url}/runtime-executor/")
            page.locator("#banner").get_by_text("Not logged in").wait_for()
            assert page.locator("#banner a").get_attribute("href").startswith(f"{env.base_url}/auth/login/")

            browser.login(env.base_url, "admin", env.airflow.password, next_path="/")
            # the menu entry: Browse -> Executor Status renders the page inside the Airflow shell
            page.get_by_role("button", name="Browse").click()
            page.get_by_role("menuitem", name="Executor Status").click()
            page.wait_for_url(f"{env.base_url}/plugin/executor-status**")
            frame = _frame(browser)
            _assert_rendered(frame)
            page.mouse.move(0, 0)
            shell = browser.screenshot(shots / "in-airflow.png")

            # it refreshes by itself: a new allocation shows up without a reload
            frame.evaluate("() => { window.__loaded = 'same-document'; }")
            insert(env.db, "arrived_after_load", dag_id="status_late", slots=1)
            _wait_text(frame, "arrived_after_load", timeout=30_000)
            assert frame.evaluate("() => window.__loaded") == "same-document"

            # a task link opens the task instance in the Airflow UI itself, not inside the frame
            frame.locator("#allocations a[data-ui]", has_text="mapped_task").first.click()
            run = "manual__2026-01-01T00%3A00%3A00%2B00%3A00"
            page.wait_for_url(f"{env.base_url}/dags/status_demo/runs/{run}/tasks/mapped_task/mapped/3")
            page.locator('iframe[title="Executor Status"]').wait_for(state="detached")

            # opened directly
            page.goto(f"{env.base_url}/runtime-executor/")
            _assert_rendered(page)
            browser.screenshot(shots / "standalone.png", full_page=True)
        except Exception:
            browser.screenshot(shots / "failure.png")
            print("browser console:\n" + "\n".join(browser.console))
            raise
    errors = [line for line in browser.console if line.startswith("pageerror")]
    assert not errors, errors
    if update:
        target = REPO / "docs" / "img" / "status-page.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shell, target)
