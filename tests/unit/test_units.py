"""The shipped systemd units and supervisor config, and the notify protocol they rely on.

* ``systemd-analyze verify`` on the units (with the install prefix pointed at this checkout's
  virtualenv, the only change), and the relations between stop timeouts and the drain timeout;
* ``runtime_executor.notify`` against a real Unix datagram socket, and real allocator / runner
  processes started with ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` as systemd starts them: READY=1,
  WATCHDOG=1 only while healthy (not while the database is cut off), STOPPING=1 on SIGTERM, and the
  watchdog kept alive during a drain.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from runtime_executor.notify import Notifier
from runtime_executor.settings import Settings
from testing.proxy import TcpProxy
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST, wait_runners, wait_states

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
SUPERVISOR = REPO / "deploy" / "supervisor"
VENV_BIN = Path(sys.executable).parent
DRAIN_STOP_OVERHEAD = 40  # seconds a runner may need after the drain timeout (kill grace, flushing outcomes)


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file; keys may repeat (EnvironmentFile=)."""
    entries, section = [], ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(path: Path, key: str) -> list[str]:
    return [v for _s, k, v in unit_entries(path) if k == key]


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "min": 60, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|s|)", value))


def envexec_module():
    loader = importlib.machinery.SourceFileLoader("rtx_envexec", str(SUPERVISOR / "rtx-envexec"))
    spec = importlib.util.spec_from_loader("rtx_envexec", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# -- systemd units ------------------------------------------------------------------------------


@pytest.fixture
def installed_units(tmp_path) -> Path:
    """The shipped units with /opt/rtx/venv pointed at this checkout's virtualenv (verify checks that
    ExecStart= is executable); nothing else changes."""
    out = tmp_path / "units"
    out.mkdir()
    for unit in SYSTEMD.glob("*.service"):
        (out / unit.name).write_text(unit.read_text().replace("/opt/rtx/venv/bin/", f"{VENV_BIN}/"))
    return out


def test_units_pass_systemd_analyze_verify(installed_units):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd)")
    units = sorted(str(p) for p in installed_units.glob("*.service"))
    assert len(units) == 2
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", "warnings: " + result.stdout + result.stderr


def test_sysusers_file_creates_the_rtx_user(tmp_path):
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers is not installed (Debian/Ubuntu: apt-get install systemd)")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "rtx.sysusers.conf")], check=True, timeout=60
    )
    [entry] = [line for line in (tmp_path / "etc/passwd").read_text().splitlines() if line.startswith("rtx:")]
    assert entry.split(":")[5:] == ["/var/lib/rtx", "/usr/sbin/nologin"]


@pytest.mark.parametrize("unit", ["rtx-allocator.service", "rtx-runner@.service"])
def test_units_notify_restart_and_stop_the_way_the_daemons_expect(unit):
    path = SYSTEMD / unit
    one = {k: v for _s, k, v in unit_entries(path)}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main" and seconds(one["WatchdogSec"]) > 0
    assert one["Restart"] == "on-failure" and seconds(one["RestartSec"]) > 0
    assert one["KillSignal"] == "SIGTERM"
    assert one["KillMode"] == "mixed"  # SIGTERM to the daemon only, never straight to its tasks
    assert one["User"] == "rtx" and one["Group"] == "rtx"
    assert "/etc/rtx/rtx.env" in unit_values(path, "EnvironmentFile")
    assert not re.search(r"://|password|secret", one["ExecStart"], re.I), "no secret on the command line"


def test_runner_unit_outlasts_the_drain():
    path = SYSTEMD / "rtx-runner@.service"
    one = {k: v for _s, k, v in unit_entries(path)}
    assert "/etc/rtx/runner-%i.env" in unit_values(path, "EnvironmentFile")
    assert "$RTX_RUNNER_ARGS" in one["ExecStart"].split()
    example = envexec_module().parse_env_file((SYSTEMD / "runner-default.env.example").read_text())
    drain = float(example["RTX_DRAIN_TIMEOUT"])
    assert drain == Settings().drain_timeout
    assert seconds(one["TimeoutStopSec"]) >= drain + DRAIN_STOP_OVERHEAD
    # hardening that would stop tasks from running is absent on the runner
    assert "PrivateDevices" not in one and one["ProtectSystem"] != "strict" and one["ProtectHome"] != "yes"


def test_supervisor_programs_outlast_the_drain_and_keep_secrets_out():
    import configparser

    conf = configparser.RawConfigParser()
    conf.read(SUPERVISOR / "rtx.conf")
    programs = [s for s in conf.sections() if s.startswith("program:")]
    assert conf.get("group:rtx", "programs").split(",") == [p.removeprefix("program:") for p in programs]
    for section in programs:
        program = dict(conf.items(section))
        assert program["stopsignal"] == "TERM" and program["stopasgroup"] == "false"
        assert program["autorestart"] == "unexpected" and program["exitcodes"] == "0"
        assert program["command"].startswith("/usr/local/bin/rtx-envexec --user rtx /etc/rtx/rtx.env ")
        assert "user" not in program  # rtx-envexec reads the root-only env files, then drops to rtx
        assert not re.search(
            r"://|password|secret", program["command"] + program.get("environment", ""), re.I
        )
    runner = dict(conf.items("program:rtx-runner-default"))
    assert float(runner["stopwaitsecs"]) >= Settings().drain_timeout + DRAIN_STOP_OVERHEAD


def test_env_examples_parse_the_same_for_systemd_and_rtx_envexec():
    envexec = envexec_module()
    shared = envexec.parse_env_file((SYSTEMD / "rtx.env.example").read_text())
    assert shared["RTX_DATABASE_URL"].startswith("postgresql://")
    runner = envexec.parse_env_file((SYSTEMD / "runner-default.env.example").read_text())
    assert envexec.expand(["serve", "$RTX_RUNNER_ARGS"], runner) == [
        "serve",
        "--slots",
        "16",
        "--cpu",
        "8",
        "--memory",
        "16GiB",
        "--queue",
        "default",
    ]
    parsed = envexec.parse_env_file('A=\'x $Y\'\nB="q\\"uote"\n# c\n; c\nC = plain value  \n')
    assert parsed == {"A": "x $Y", "B": 'q"uote', "C": "plain value"}


# -- the notify protocol ------------------------------------------------------------------------


class NotifySocket:
    """What systemd does: a datagram socket whose messages we collect."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"rtx-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self._dir = tempfile.mkdtemp(prefix="rtx-notify-", dir="/tmp")  # short: sun_path is 108 bytes
            self.address = os.path.join(self._dir, "notify.sock")
            self.sock.bind(self.address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def fields(self, since: float = 0.0) -> list[tuple[float, str]]:
        return [(at, f) for at, msg in list(self.messages) if at >= since for f in msg.split("\n")]

    def wait_for(self, field: str, since: float = 0.0, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, f in self.fields(since):
                if f == field:
                    return at
            time.sleep(0.05)
        raise AssertionError(f"no {field} within {timeout}s; got {self.messages}")

    def message_with(self, field: str) -> list[str]:
        return next(msg.split("\n") for _, msg in list(self.messages) if field in msg.split("\n"))

    def count(self, field: str, since: float, until: float | None = None) -> int:
        return sum(1 for at, f in self.fields(since) if f == field and (until is None or at <= until))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        if not self.address.startswith("@"):
            shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def notify_socket(request):
    s = NotifySocket(abstract=request.param)
    yield s
    s.close()


def test_notifier_sends_datagrams(notify_socket):
    n = Notifier.from_environ({"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "3000000"})
    assert n.enabled and n.watchdog_interval == 1.5
    assert n.ready("serving") and n.watchdog() and n.stopping("bye now") and n.status("a\nb")
    notify_socket.wait_for("STATUS=a b")
    assert [m for _, m in notify_socket.messages] == [
        "READY=1\nSTATUS=serving",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=bye now",
        "STATUS=a b",
    ]


def test_notifier_is_a_no_op_without_systemd(monkeypatch):
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    n = Notifier.from_environ()
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready() is False and n.watchdog() is False and n.stopping() is False
    # a socket that is gone never raises
    assert Notifier("/nonexistent/notify.sock").ready() is False


def test_notifier_watchdog_for_another_pid_is_off_and_unset_hides_it_from_children(monkeypatch):
    n = Notifier.from_environ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.enabled and n.watchdog_interval is None
    monkeypatch.setenv("NOTIFY_SOCKET", "@x")
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_environ(unset=True)
    assert n.address == "\0x" and n.watchdog_interval == 0.5
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}").geturl()


def test_allocator_is_ready_renews_the_watchdog_only_while_healthy_and_says_stopping(daemons):
    """Cut the allocator off its database: the watchdog stops being renewed (systemd would restart
    it), and resumes once the database is back. (A socket path here, the abstract namespace below.)"""
    target = urlsplit(daemons.db_url)
    proxy = TcpProxy(target.hostname, target.port)
    notify_socket = NotifySocket()
    try:
        allocator = daemons.allocator(
            NOTIFY_SOCKET=notify_socket.address,
            WATCHDOG_USEC="400000",  # renew every 0.2 s
            RTX_DATABASE_URL=_with_port(daemons.db_url, proxy.port),
            RTX_HEARTBEAT_INTERVAL="0.5",
            RTX_LEASE_TIMEOUT="1.5",  # unhealthy after 3 x 1.5 s without a successful tick
            RTX_ALLOCATOR_POLL_INTERVAL="0.5",
        )
        ready = notify_socket.wait_for("READY=1")
        assert notify_socket.message_with("READY=1") == ["READY=1", "STATUS=serving"]
        time.sleep(1.0)
        assert notify_socket.count("WATCHDOG=1", ready) >= 3

        proxy.cut()
        cut_at = time.monotonic()
        unhealthy = notify_socket.wait_for("STATUS=unhealthy: not renewing the watchdog", cut_at, timeout=20)
        assert unhealthy - cut_at >= 3.0  # not at once: only after about 3 x lease_timeout (4.5 s)
        time.sleep(1.5)
        assert notify_socket.count("WATCHDOG=1", unhealthy + 0.1) == 0

        proxy.restore()
        restored = time.monotonic()
        back = notify_socket.wait_for("WATCHDOG=1", restored, timeout=30)
        notify_socket.wait_for("STATUS=serving", restored)
        assert allocator.proc.poll() is None

        allocator.send(signal.SIGTERM)
        assert allocator.proc.wait(30) == 0
        notify_socket.wait_for("STOPPING=1", back)
        assert notify_socket.message_with("STOPPING=1") == [
            "STOPPING=1",
            "STATUS=stopping: finishing current work",
        ]
        log = allocator.log()
        assert "loop unhealthy" in log and "daemon unhealthy" in log and "daemon healthy again" in log
    finally:
        proxy.close()
        notify_socket.close()


def test_runner_renews_the_watchdog_during_its_drain(db, daemons, tmp_path):
    notify = NotifySocket(abstract=True)
    try:
        daemons.allocator(**FAST)
        runner = daemons.runner(
            "--slots", "1", name="r1", NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="400000", **FAST
        )
        ready = notify.wait_for("READY=1")
        wait_runners(daemons.db_url, 1)
        [running] = insert_allocations(db, 1, workload={"sleep": 2.5})
        wait_states(daemons.db_url, [running], {"running"})
        runner.send(signal.SIGTERM)
        assert runner.proc.wait(30) == 0
        stopping = notify.wait_for("STOPPING=1", ready)
        exited = time.monotonic()
        # the drain waited for the task (about 2 s) and the watchdog was renewed all along
        assert notify.count("WATCHDOG=1", stopping, exited) >= 4
        assert wait_states(daemons.db_url, [running], {"succeeded"})
    finally:
        notify.close()
