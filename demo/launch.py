"""``start``'s six steps: database, migrations, Airflow, rtx, the example run, ``rtx status``.

Each step prints one line (``demo.progress.step``). Until step 4 is done a failure leaves things
half up, and the caller (``demo.cli.start``) stops what was started; from step 5 on the stack is up,
and a failure raises ``UpError`` so that the demo keeps running to be looked at.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from demo.airflow_api import healthy
from demo.config import DAGS, DEFAULT_PORT, LOGIN, REPO, RUNNER_DRAIN_TIMEOUT, RUNNERS, STATUS_PAGE
from demo.example import example_run
from demo.postgres import start_database
from demo.processes import exited, spawn
from demo.progress import DemoError, mask, rel, say, step, wait_until
from demo.state import State, stop_command
from testing.airflow_stack import COMPONENTS, AirflowStack
from testing.pgcluster import free_port

TOTAL = 6


class UpError(DemoError):
    """A failure after the stack came up (the demo keeps running)."""

    def __init__(self, cause: BaseException) -> None:
        where = cause.where if isinstance(cause, DemoError) else None
        message = str(cause) if isinstance(cause, DemoError) else f"{type(cause).__name__}: {cause}"
        super().__init__(message, where)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(requested: int | None) -> int:
    if requested:
        if not port_free(requested):
            raise DemoError(
                f"port {requested} is in use",
                "pick a free one with --port, or leave --port out (8080 if free, else any free port)",
            )
        return requested
    return DEFAULT_PORT if port_free(DEFAULT_PORT) else free_port()


def write_env_file(root: Path, env: dict[str, str]) -> Path:
    """``<dir>/env.sh`` (mode 600): the demo's settings, to run ``airflow``/``rtx`` commands against it."""
    path = root / "env.sh"
    keep = sorted(k for k in env if k.startswith("AIRFLOW__") or k == "AIRFLOW_HOME")
    lines = [
        "# The rtx demo's settings (written by `python -m demo start`). Holds the demo's",
        "# database password: keep it private.  Use: source .demo/env.sh && rtx status",
    ]
    lines += [f"export {k}={shlex.quote(env[k])}" for k in keep]
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n")
    return path


def rtx_status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime_executor", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def settle(env: dict[str, str], timeout: float = 20) -> bool:
    """Wait until the runners have reported every allocation done (a task process outlives its
    Airflow success by a moment), so the status shows the demo at rest."""

    def at_rest() -> bool:
        result = rtx_status(env, "--json")
        if result.returncode != 0:
            return False
        snap = json.loads(result.stdout)
        return not snap["unassigned"] and not any(r["allocations"] for r in snap["runners"])

    try:
        return wait_until("not settled", at_rest, timeout, None)
    except DemoError:
        return False


def capacity(flags: tuple[str, ...]) -> str:
    values = dict(zip(flags[::2], flags[1::2], strict=True))
    queues = [flags[i + 1] for i in range(0, len(flags), 2) if flags[i] == "--queue"] or ["default"]
    return f"{values['--slots']} slots, {values['--cpu']} cpu, {values['--memory']} MB, queues {'+'.join(queues)}"


def bring_up(root: Path, state: State, port_option: int | None, timeout: float) -> None:
    """Steps 1-6. A failure once Airflow and rtx are up raises ``UpError`` (the demo keeps running)."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    port = choose_port(port_option)  # before anything starts: a busy --port fails at once
    with step(1, TOTAL, "database") as s:
        database_url, s.detail = start_database(state)
    os.environ.pop("RTX_DEMO_DATABASE_URL", None)
    os.environ.pop("RTX_PG_BIN", None)

    stack = AirflowStack(
        root / "airflow",
        database_url,
        port=port,
        dags_folder=DAGS,
        all_admins=False,
        password=LOGIN[1],
        extra_env={"AIRFLOW__API__HOST": "127.0.0.1"},
    )
    stack.logs_dir = logs
    env = stack.env()
    ui = f"http://127.0.0.1:{port}/"
    state.data.update(ui=ui, port=port)
    state.save()
    env_file = write_env_file(root, env)

    with step(2, TOTAL, "migrations") as s:
        try:
            stack.prepare()
        except RuntimeError as exc:
            (logs / "migrate.log").write_text(mask(str(exc)) + "\n")
            raise DemoError(str(exc).splitlines()[0], logs / "migrate.log") from None
        s.detail = "airflow db migrate, rtx db migrate"

    airflow = str(Path(sys.executable).parent / "airflow")
    with step(3, TOTAL, "airflow") as s:
        procs: dict[str, subprocess.Popen] = {}
        for component in COMPONENTS:
            argv = [airflow, component] + (["--port", str(port)] if component == "api-server" else [])
            procs[component] = spawn(
                state, component, component, argv, env, stack.home, logs / f"{component}.log"
            )
        # rtx's daemons need only the database: they start while the api-server comes up
        daemon_env = dict(env, RTX_LOG_FORMAT="console")
        rtx: dict[str, subprocess.Popen] = {
            "allocator": spawn(
                state, "allocator", "allocator", [sys.executable, "-m", "allocator", "serve"], daemon_env, root,
                logs / "allocator.log",
            )
        }  # fmt: skip
        for name, flags in RUNNERS:
            rtx[name] = spawn(
                state, name, "runner", [sys.executable, "-m", "runner", "serve", "--name", name, *flags],
                dict(daemon_env, RTX_DRAIN_TIMEOUT=str(RUNNER_DRAIN_TIMEOUT)), root, logs / f"{name}.log",
            )  # fmt: skip

        def airflow_alive() -> None:
            for component, proc in procs.items():
                if proc.poll() is not None:
                    raise exited(f"airflow {component}", proc, logs / f"{component}.log")

        wait_until(
            "the api-server did not answer", lambda: healthy(stack.base_url), 240,
            logs / "api-server.log", check=airflow_alive,
        )  # fmt: skip
        s.detail = f"api-server on {ui}, scheduler, dag-processor (pids {', '.join(str(p.pid) for p in procs.values())})"

    with step(4, TOTAL, "rtx") as s:

        def rtx_alive() -> None:
            airflow_alive()
            for name, proc in rtx.items():
                if proc.poll() is not None:
                    raise exited(f"rtx {name}", proc, logs / f"{name}.log")

        def runners_registered() -> bool:
            result = rtx_status(env, "--json")
            if result.returncode != 0:
                return False
            names = {r["name"] for r in json.loads(result.stdout)["runners"] if r["state"] == "active"}
            return names >= {name for name, _ in RUNNERS}

        wait_until(
            "the runners did not register", runners_registered, 60, [logs / f"{n}.log" for n, _ in RUNNERS],
            check=rtx_alive,
        )  # fmt: skip
        s.detail = f"allocator (pid {rtx['allocator'].pid}); runners " + ", ".join(
            f"{name} ({capacity(flags)}, pid {rtx[name].pid})" for name, flags in RUNNERS
        )

    state.data["status"] = "running"
    state.save()
    # from here on the stack is up: a failing example run leaves it running to be looked at
    try:
        example_run(stack.base_url, env, stack.home, logs, TOTAL, timeout, rtx_alive)
        with step(6, TOTAL, "rtx status") as s:
            settled = settle(env)
            result = rtx_status(env)
            if result.returncode == 0:
                s.detail = f"{rel(Path(sys.executable).parent / 'rtx')} status"
                s.lines = ["    " + line if line else "" for line in result.stdout.rstrip().splitlines()]
                if not settled:
                    s.lines.append("    (some allocations were still finishing when this was taken)")
            else:
                s.detail = f"rtx status failed: {(result.stderr or result.stdout).strip()}"
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UpError(exc) from exc

    rtx_cli = rel(Path(sys.executable).parent / "rtx")
    say("")
    say(f"  UI               {ui}   login {LOGIN[0]} / {LOGIN[1]}")
    say(f"  Executor Status  {ui.rstrip('/')}{STATUS_PAGE}   (Browse → Executor Status)")
    say(f"  rtx status       source {rel(env_file)} && {rtx_cli} status --watch 2")
    say(f"  example DAG      {rel(DAGS / 'rtx_example.py')} (trigger it again from the UI)")
    say(
        f"  logs             {rel(logs)}/ (api-server, scheduler, dag-processor, allocator, demo-small, demo-large)"
    )
    say(f"                   task logs {rel(stack.home / 'logs')}/")
    if (state.data.get("database") or {}).get("embedded"):
        say(f"                   PostgreSQL {rel(state.data['database']['log'])}")
    say(f"  state            {rel(state.path)} (pids), stop with: {stop_command(root)}")
