"""A task process forked ahead of its task (runner/prestart.py), with Airflow's real supervisor class,
real forks and real sockets, each case in a fresh interpreter that imports runner.task_process (as a
runner's fork server does). The task side is a small target that records what it was started with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil

from tests.integration.conftest import REPO, cli_env

PRELUDE = r"""
import inspect, json, os, signal, sys, time, uuid
import psutil
import runner.task_process  # noqa: F401 - installs prestart, as in the fork server
from runner import prestart, task_entry
from airflow.sdk.execution_time.supervisor import ActivitySubprocess, WatchedSubprocess

signal.alarm(30)  # a supervisor that never learns of its task's end fails the case, not the suite
OUT = sys.argv[1]

SECRET = "the-previous-tasks-secret"

def target():
    from airflow.sdk._shared.secrets_masker import redact
    with open(OUT, "w") as f:
        json.dump({"pid": os.getpid(), "pgid": os.getpgid(0), "probe": os.environ.get("RTX_PROBE"),
                   "knows_secret": redact(SECRET) != SECRET}, f)
    # ends as a task does: its sockets to the supervisor close at exit

# what ActivitySubprocess.start asks of start() on this Airflow (3.3: a process group of its own)
GROUP = "new_process_group=True" in inspect.getsource(ActivitySubprocess.start)

def supervise(target=target, **kwargs):
    # ActivitySubprocess.start's call (3.1-3.3), without the API (no client)
    if GROUP:
        kwargs.setdefault("new_process_group", True)
    proc = WatchedSubprocess.start.__func__(ActivitySubprocess, target=target, id=uuid.uuid4(), client=None, **kwargs)
    proc._last_successful_heartbeat = proc._last_heartbeat_attempt = time.monotonic()
    began = time.monotonic()
    proc._monitor_subprocess()
    return proc, time.monotonic() - began

def task():
    with open(OUT) as f:
        return json.load(f)

def result(**values):
    values["left"] = task_entry.descendants(os.getpid())
    values["group"] = GROUP
    values["me"] = {"pid": os.getpid(), "pgid": os.getpgid(0)}
    print(json.dumps(values))
"""

TAKEN = r"""
assert prestart._original_start is not None, "prestart not installed"
from airflow.sdk._shared.secrets_masker import mask_secret, redact
mask_secret(SECRET)  # as the previous task's supervisor did for a value it forwarded
assert redact(SECRET) != SECRET
ahead = prestart.prestart(marker=7, target=target)
time.sleep(0.3)  # it waits: nothing of the task ran
ran_early = os.path.exists(OUT)
os.environ["RTX_PROBE"] = "set after the fork"  # the spare's environment when the task comes
with prestart.offered(True, marker=7):
    proc, seconds = supervise()
result(ahead=ahead, started=proc.pid, exit=proc._exit_code, seconds=seconds, task=task(), ran_early=ran_early)
"""

NOT_USABLE = r"""
out = {}
for case, usable, marker in (("callback", False, 7), ("parsed since", True, 8)):
    ahead = prestart.prestart(marker=7, target=target)
    with prestart.offered(usable, marker=marker):
        proc, seconds = supervise()
    out[case] = {"ahead": ahead, "ahead_alive": psutil.pid_exists(ahead) and psutil.Process(ahead).status() != "zombie",
                 "started": proc.pid, "exit": proc._exit_code, "task": task()}
# it dies after offered() saw it alive (the OOM killer, say): the start message finds no reader
ahead = prestart.prestart(marker=7, target=target)
os.kill(ahead, signal.SIGKILL)
time.sleep(0.2)
alive, prestart._alive = prestart._alive, lambda held: True
with prestart.offered(True, marker=7):
    proc, seconds = supervise()
prestart._alive = alive
out["died since"] = {"ahead": ahead, "started": proc.pid, "exit": proc._exit_code, "task": task()}
# another target than the one it was forked for: start() forks its own
ahead = prestart.prestart(marker=7, target=target)
def other():
    target()
with prestart.offered(True, marker=7):
    proc, seconds = supervise(target=other)
out["other target"] = {"ahead": ahead, "started": proc.pid, "exit": proc._exit_code, "task": task()}
result(**out)
"""

RETIRED = r"""
ahead = prestart.prestart(marker=None, target=target)
prestart.discard()  # a spare that retires (runner.task_process.retire)
discarded = {"ahead": ahead, "left": task_entry.descendants(os.getpid())}
ahead = prestart.prestart(marker=None, target=target)
print(json.dumps({"discarded": discarded, "orphan": ahead}), flush=True)
os._exit(0)  # a spare that dies with a child waiting: the child must go by itself
"""


SETUP_PAGES = r"""
import resource, statistics
from runner import task_process
from airflow.sdk.api.client import Client
from airflow.sdk.execution_time import supervisor
SERVER = "http://127.0.0.1:9/execution/"

def setup(i):
    # the next task's supervisor set-up, as supervise_task does it (no request is sent)
    began = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    client = Client(base_url=SERVER, token="token")  # as supervise() makes it (3.1-3.3)
    _, log_file = supervisor._configure_logging(os.path.join(os.path.dirname(OUT), f"{i}.log"), client)
    supervisor.ensure_secrets_backend_loaded()
    log_file.close()
    client.close()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - began

setup(0)  # a spare that ran a task before
faults = {"fork only": [], "between_tasks": []}
for i in range(1, 13):
    if i % 2:
        prestart.prestart(marker=None, target=target)  # the fork ahead alone
        case = "fork only"
    else:
        task_process.between_tasks()  # the fork ahead, then the set-up's pages copied
        case = "between_tasks"
    faults[case].append(setup(i))
prestart.discard()
result(**{case: statistics.median(n) for case, n in faults.items()})
"""


def _run(script: str, tmp_path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + script, str(tmp_path / "task.json")],
        env=cli_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_supervisor_takes_the_child_forked_ahead_and_sees_it_end(tmp_path):
    got = _run(TAKEN, tmp_path)
    assert got["ran_early"] is False  # forked ahead, it ran nothing before its start
    assert got["started"] == got["ahead"] == got["task"]["pid"]  # the supervisor's child is that one
    assert got["exit"] == 0
    assert got["seconds"] < 5.0, got  # it learnt of the end (a child end left open: it would wait forever)
    assert got["task"]["probe"] == "set after the fork"  # the environment of the spare at the start
    assert got["task"]["knows_secret"] is False  # what the spare masked for an earlier task is not its
    if got["group"]:  # 3.3: a process group of its own, as start()'s child makes
        assert got["task"]["pgid"] == got["task"]["pid"]
    else:  # 3.1, 3.2: the supervisor's group
        assert got["task"]["pgid"] == got["me"]["pgid"]
    assert got["left"] == []


def test_a_child_forked_ahead_that_does_not_fit_is_discarded_and_start_forks(tmp_path):
    got = _run(NOT_USABLE, tmp_path)
    for case in ("callback", "parsed since", "died since", "other target"):
        c = got[case]
        assert c["started"] != c["ahead"], (case, c)  # start() forked a new child for this task
        assert c["task"]["pid"] == c["started"] and c["exit"] == 0, (case, c)
    assert got["callback"]["ahead_alive"] is False and got["parsed since"]["ahead_alive"] is False
    assert got["left"] == []  # every child discarded was reaped, not left behind


def test_after_the_fork_ahead_the_next_tasks_set_up_finds_its_pages_copied(tmp_path):
    # Each page this spare still shares with the child costs the next task's set-up a copy-on-write
    # fault on its path to the start; between_tasks takes them while the spare waits.
    got = _run(SETUP_PAGES, tmp_path)
    assert got["fork only"] > 200, got  # the set-up writes hundreds of shared pages (~700 seen)
    assert got["between_tasks"] < got["fork only"] / 3, got  # 13-126 seen
    assert got["left"] == []


def test_a_retired_or_dead_spare_leaves_no_child_forked_ahead(tmp_path):
    got = _run(RETIRED, tmp_path)
    assert got["discarded"]["left"] == []
    orphan = got["orphan"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        os.kill(orphan, 9)
        raise AssertionError(f"the child forked ahead outlived its spare: {orphan}")
    assert not os.path.exists(tmp_path / "task.json")  # and it ran nothing
