"""A warm task process parses each DAG file once for the tasks it runs (runner/dag_cache.py), with real
Airflow: the tasks of a chain share one parse made in their own supervisor, a changed helper module
or data file is parsed again before the next task, and a DAG file whose top-level code reads a
Variable is parsed by each task, as without the cache, so the task sees the Variable's value.

One runner with one slot and one spare, so the tasks of a chain run in turn in the same warm process.
The DAG files record each parse made for a task (``RTX_ALLOCATION_ID`` is set: not the
dag-processor's) with the pid that made it; each task prints its supervisor's pid.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, airflow_stack

pytestmark = pytest.mark.e2e

SERVED = "DAG file parsed by this task's supervisor, before the task (rtx --dag-cache)"
PRESTARTED = "Task process forked ahead of its task (rtx prestart)"

CHAIN_DAG = """
import json, os
from pathlib import Path

import cache_helper
from airflow.sdk import DAG, task

HERE = Path(__file__).parent
if os.environ.get("RTX_ALLOCATION_ID"):  # a parse for a task (the dag-processor's has no allocation)
    with open(HERE / "parses.log", "a") as f:
        f.write(f"{os.getpid()}\\n")
GREETING = json.loads((HERE / "settings.json").read_text())["greeting"]


@task
def report(value, greeting):
    print(f"cache-test value={value} greeting={greeting} supervisor={os.getppid()}")


with DAG("rtx_dag_cache", schedule=None, catchup=False):
    previous = None
    for i in range(4):
        current = report.override(task_id=f"t{i}")(cache_helper.VALUE, GREETING)
        if previous is not None:
            previous >> current
        previous = current
"""

VARIABLE_DAG = """
from airflow.sdk import DAG, Variable, task

VALUE = Variable.get("rtx_cache_var", default="unset")  # top-level: read through the task's supervisor


@task
def show(value):
    print(f"variable-test value={value}")


with DAG("rtx_dag_cache_variable", schedule=None, catchup=False):
    a = show.override(task_id="a")(VALUE)
    b = show.override(task_id="b")(VALUE)
    a >> b
"""


@pytest.fixture(scope="module")
def cache_stack(pg_admin_url, tmp_path_factory):
    dags = tmp_path_factory.mktemp("dags")
    (dags / "cache_helper.py").write_text('VALUE = "one"\n')
    (dags / "settings.json").write_text('{"greeting": "hello"}\n')
    (dags / "rtx_dag_cache.py").write_text(CHAIN_DAG)
    (dags / "rtx_dag_cache_variable.py").write_text(VARIABLE_DAG)
    with airflow_stack(pg_admin_url, tmp_path_factory.mktemp("airflow"), dags) as s:
        s.daemon(
            "runner", "runner", "--slots", "1", "--spare-processes", "1", "--cpu", "1", "--memory", "1024"
        )
        yield s, dags


def _run(stack: Stack, dag_id: str) -> tuple[str, dict[str, str]]:
    run_id = stack.airflow.trigger(dag_id)
    try:
        state = stack.airflow.wait_for_run(dag_id, run_id, 180)
    except Exception:
        print(stack.logs())
        raise
    tis = stack.airflow.task_instances(dag_id, run_id)
    assert state == "success", (tis, stack.logs())
    return run_id, {t: stack.airflow.task_log(dag_id, run_id, t) for t in tis}


def _parses(dags: Path) -> list[int]:
    path = dags / "parses.log"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_tasks_share_one_parse_and_a_changed_file_is_parsed_again(cache_stack):
    stack, dags = cache_stack
    _, logs = _run(stack, "rtx_dag_cache")
    parses = _parses(dags)
    supervisors = set()
    for task_id, log in logs.items():
        found = re.search(r"cache-test value=(\w+) greeting=(\w+) supervisor=(\d+)", log)
        assert found, (task_id, log[-3000:])
        assert found.group(1, 2) == ("one", "hello")
        assert SERVED in log, (task_id, log[-3000:])  # its DAG came from its supervisor's parse
        supervisors.add(int(found.group(3)))
    # every parse for these 4 tasks was made by their supervisors, not by the task processes; without
    # the cache each task process parses (4 lines, 4 task pids)
    assert set(parses) == supervisors, (parses, supervisors)
    assert len(parses) < len(logs), parses
    # one slot, one warm process for the whole chain (a supervisor that missed its task's end would
    # hold its slot, and the next task would need another process), and every task after its first
    # ran in a task process it had forked while it waited (runner/prestart.py)
    assert len(supervisors) == 1, supervisors
    runner_log = next(d for d in stack.daemons if d.name == "runner").log()
    assert runner_log.count(PRESTARTED) >= len(logs) - 1, runner_log[-3000:]

    # A helper module and a data file the DAG reads change: the next tasks run what is there now.
    (dags / "cache_helper.py").write_text('VALUE = "two"\n')
    (dags / "settings.json").write_text('{"greeting": "bonjour"}\n')
    _, logs = _run(stack, "rtx_dag_cache")
    for task_id, log in logs.items():
        found = re.search(r"cache-test value=(\w+) greeting=(\w+)", log)
        assert found and found.group(1, 2) == ("two", "bonjour"), (task_id, log[-3000:])
    assert len(_parses(dags)) > len(parses)


def test_top_level_variable_read_is_parsed_by_each_task(cache_stack):
    stack, _ = cache_stack
    stack.airflow.api(
        "POST", "/api/v2/variables", json={"key": "rtx_cache_var", "value": "from-the-api"}
    ).raise_for_status()
    _, logs = _run(stack, "rtx_dag_cache_variable")
    for task_id, log in logs.items():
        # the spare's parse would have read only its environment (and so the default): not kept
        assert "variable-test value=from-the-api" in log, (task_id, log[-3000:])
        assert SERVED not in log, (task_id, log[-3000:])
        assert "rtx --dag-cache could not" in log and "asked for a Variable or Connection" in log, log[-3000:]
