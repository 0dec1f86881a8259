"""What rtx's task processes change in Airflow's task supervisor (runner/task_process.py), with the
real supervisor class, a real forked child and real sockets, each in a fresh interpreter (as in a
runner's fork server, where the change is made)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.conftest import REPO, cli_env

# The child closes every socket to its supervisor, then lives a second more: the supervisor has read
# EOF on all of them before the exit can be reaped (what a task's exit does, for a moment, on a
# loaded host). How long the supervisor's own loop takes to learn of the exit is printed.
SUPERVISE = r"""
import json, os, sys, time, uuid
if sys.argv[1] == "rtx":
    import runner.task_process  # noqa: F401 - what the runner's fork server imports
from airflow.sdk.execution_time.supervisor import ActivitySubprocess, WatchedSubprocess

def target():
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, 65536)
    time.sleep(1.0)

proc = WatchedSubprocess.start.__func__(ActivitySubprocess, target=target, id=uuid.uuid4(), client=None)
proc._last_successful_heartbeat = proc._last_heartbeat_attempt = time.monotonic()  # no API here
started = time.monotonic()
proc._monitor_subprocess()
print(json.dumps({"seconds": time.monotonic() - started, "exit_code": int(proc._exit_code)}))
"""


def _supervise(kind: str) -> dict:
    env = cli_env()
    env["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"] = "5"
    out = subprocess.run(
        [sys.executable, "-c", SUPERVISE, kind],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_supervisor_learns_of_its_tasks_exit_when_it_happens():
    """Airflow's own loop sleeps [workers] min_heartbeat_interval (5 s here) once no socket is left;
    in an rtx task process it wakes at the exit (a pidfd in its selector), ~1 s after the EOFs."""
    airflow = _supervise("airflow")
    rtx = _supervise("rtx")
    assert airflow["exit_code"] == rtx["exit_code"] == 0
    # the race is Airflow's: if this fails, Airflow fixed it and _wake_on_task_exit can go
    assert airflow["seconds"] >= 4.5, airflow
    assert 0.9 <= rtx["seconds"] < 3.0, rtx
