"""Settings: one name per setting, read the same way by the shim, the daemons and the CLI.

Precedence, highest first: a daemon flag, ``RTX_<NAME>``, ``AIRFLOW__RUNTIME_EXECUTOR__<NAME>``,
``[runtime_executor] <name>`` in ``$AIRFLOW_HOME/airflow.cfg``, the default below. Airflow's config
file is read with configparser, so this module (and the allocator) never imports Airflow.

The database defaults to Airflow's own metadata database (``[database] sql_alchemy_conn``, with the
SQLAlchemy driver suffix removed); ``RTX_DATABASE_URL`` / ``--database-url`` override it.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

SECTION = "runtime_executor"
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "console", "json")
ISOLATIONS = ("none", "cgroup")


class ConfigError(ValueError):
    """A setting with a value we cannot use; the message names the setting."""


# Seconds before its local lease ends by which a cut-off runner has SIGKILLed its tasks' trees: covers
# the reaper's wake-up and the kill itself (runner.lease).
FENCE_MARGIN = 1.0


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    schema: str = "runtime_executor"
    # allocator
    strategy: str = "EvenSpreadStrategy"
    allocator_batch_size: int = 5000
    allocator_poll_interval: float = 2.0
    unschedulable_timeout: float = 600.0
    # shim: tasks the scheduler may hand rtx beyond [core] parallelism, to wait in rtx's queue and
    # start the moment a slot frees (rtx still runs at most parallelism at once); -1: as many again.
    # 0 by default: a task waiting there is QUEUED in Airflow, and task_queued_timeout counts.
    queue_ahead: int = 0
    # runner
    heartbeat_interval: float = 2.0
    lease_timeout: float = 20.0
    runner_poll_interval: float = 2.0
    drain_timeout: float = 300.0
    kill_grace: float = 5.0  # seconds between SIGTERM and SIGKILL when the runner stops a task
    start_retries: int = 3  # re-placements of a task whose start failed before any of its code ran
    usage_interval: float = 5.0  # seconds between samples of the tasks' CPU and memory
    tasks_per_process: int = 100  # tasks one spare process runs in turn before it is retired (1: one each)
    dag_cache: bool = True  # a spare parses each DAG file once for the tasks it runs (runner.dag_cache)
    enforce_memory: bool = False  # stop a task whose memory passes its reservation by memory_margin
    memory_margin: float = 10.0  # percent over the reservation before --enforce-memory stops a task
    task_env_allow: str = ""  # comma-separated database-credential variables tasks may still see
    isolation: str = "none"  # "cgroup": each task in a cgroup of its own held to its reservation
    cgroup_root: str = ""  # the cgroup under which task cgroups go (default: the runner's own)
    cpu_limit: bool = False  # with cgroup isolation: a hard CPU quota of the request, not only a weight
    # all
    metrics_port: int = 0  # Prometheus /metrics of a daemon; 0 = off
    metrics_host: str = "127.0.0.1"
    retention: float = 86400.0
    unreported_retention: float = 604800.0  # terminal rows never reported (e.g. of a dead scheduler)
    # every rtx session (runtime_executor.db.connection): seconds, 0 = no limit
    lock_timeout: float = 5.0  # longest wait for a lock before the statement fails (and is retried)
    idle_in_transaction_timeout: float = 10.0  # the server ends a session idle this long inside a transaction
    statement_timeout: float = 60.0  # longest statement (migrations are exempt)
    keepalives_idle: int = 5  # TCP keepalives: seconds idle before the first probe,
    keepalives_interval: int = 2  # seconds between probes,
    keepalives_count: int = 3  # probes lost before the connection is dropped
    log_format: str = "auto"
    log_level: str = "info"

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


_ENV_PREFIXES = ("RTX_", f"AIRFLOW__{SECTION.upper()}__")


def _airflow_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    home = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
    cfg = Path(os.environ.get("AIRFLOW_CONFIG", home / "airflow.cfg"))
    if cfg.is_file():
        with contextlib.suppress(configparser.Error):
            parser.read(cfg)
    return parser


def _lookup(name: str, env: Mapping[str, str], cfg: configparser.ConfigParser) -> str | None:
    for prefix in _ENV_PREFIXES:
        value = env.get(prefix + name.upper())
        if value not in (None, ""):
            return value
    if cfg.has_option(SECTION, name):
        return cfg.get(SECTION, name)
    return None


def airflow_database_url(env: Mapping[str, str] | None = None) -> str:
    """Airflow's metadata database as a libpq URL, or '' when none is configured.

    Reads ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``, its ``_CMD`` variant (the command's output, as
    Airflow does), then the same keys in airflow.cfg. ``_SECRET`` needs Airflow's secrets backend:
    set ``RTX_DATABASE_URL`` for the daemons in that case.
    """
    env = os.environ if env is None else env
    url = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or env.get("AIRFLOW__CORE__SQL_ALCHEMY_CONN")
    command = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD")
    if not url and not command:
        cfg = _airflow_cfg()
        for section in ("database", "core"):
            if cfg.has_option(section, "sql_alchemy_conn"):
                url = cfg.get(section, "sql_alchemy_conn")
                break
            if cfg.has_option(section, "sql_alchemy_conn_cmd"):
                command = cfg.get(section, "sql_alchemy_conn_cmd")
                break
    if not url and command:
        result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise ConfigError(f"sql_alchemy_conn_cmd exited with code {result.returncode}")
        url = result.stdout.strip()
    return to_libpq_url(url) if url else ""


def to_libpq_url(url: str) -> str:
    """``postgresql+psycopg://u:p@h/db`` -> ``postgresql://u:p@h/db``; other schemes are refused."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url  # a libpq keyword/value string ("host=... dbname=...")
    base = scheme.split("+", 1)[0]
    if base not in ("postgresql", "postgres"):
        raise ConfigError(f"database_url: rtx needs PostgreSQL, got a '{base}' URL")
    return f"postgresql://{rest}"


def resolve_database_url(
    configured: str, env: Mapping[str, str] | None = None, airflow_url: str | None = None
) -> str:
    """rtx's database as a libpq URL; the one place that decides it for the daemons, the CLI, the
    shim and the status page.

    ``configured`` (``--database-url``, ``RTX_DATABASE_URL``, ``[runtime_executor] database_url``)
    wins; else Airflow's metadata database: ``airflow_url`` when the caller runs inside Airflow and
    passes its ``[database] sql_alchemy_conn`` (Airflow's own config also resolves ``_SECRET`` and
    its defaults), otherwise read from the environment and airflow.cfg without Airflow
    (``airflow_database_url``). A non-PostgreSQL URL is a ConfigError.
    """
    if configured:
        return to_libpq_url(configured)
    if airflow_url is not None:
        return to_libpq_url(airflow_url) if airflow_url else ""
    return airflow_database_url(env)


def load_settings(
    env: Mapping[str, str] | None = None, *, airflow_url: str | None = None, **overrides: Any
) -> Settings:
    """The settings by the precedence above; ``airflow_url``: see ``resolve_database_url``."""
    env = os.environ if env is None else env
    cfg = _airflow_cfg()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = _lookup(f.name, env, cfg)
        if raw is None:
            continue
        kind = type(getattr(Settings, f.name))
        try:
            values[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
        except ValueError:
            raise ConfigError(f"{f.name}={raw!r} is not a valid {kind.__name__}") from None
    settings = Settings(**values).with_overrides(**overrides)
    settings = replace(settings, database_url=resolve_database_url(settings.database_url, env, airflow_url))
    validate(settings)
    return settings


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def check_schema_name(schema: str) -> str:
    """``schema`` if it is a lower-case SQL identifier (the one check: it makes the name safe to splice
    into SQL, see ``runtime_executor.db.gateway.query``); otherwise a ConfigError naming it."""
    if not _SCHEMA_RE.match(schema):
        raise ConfigError(f"schema={schema!r} must be a lower-case SQL identifier")
    return schema


def validate(settings: Settings) -> None:
    check_schema_name(settings.schema)
    for name in ("heartbeat_interval", "lease_timeout", "allocator_poll_interval", "runner_poll_interval"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name}={getattr(settings, name)!r} must be > 0")
    if settings.lease_timeout <= 2 * settings.heartbeat_interval:
        raise ConfigError(
            f"lease_timeout={settings.lease_timeout:g} must be more than twice "
            f"heartbeat_interval={settings.heartbeat_interval:g}"
        )
    if settings.usage_interval <= 0:
        raise ConfigError(f"usage_interval={settings.usage_interval!r} must be > 0")
    if settings.memory_margin < 0:
        raise ConfigError(f"memory_margin={settings.memory_margin!r} must be >= 0")
    if settings.isolation not in ISOLATIONS:
        raise ConfigError(f"isolation={settings.isolation!r} must be one of {', '.join(ISOLATIONS)}")
    if not 0 <= settings.metrics_port <= 65535:
        raise ConfigError(f"metrics_port={settings.metrics_port!r} must be a TCP port (0 = off)")
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level={settings.log_level!r} must be one of {', '.join(LOG_LEVELS)}")
    if settings.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format={settings.log_format!r} must be one of {', '.join(LOG_FORMATS)}")
    for name in ("lock_timeout", "idle_in_transaction_timeout", "statement_timeout"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{name}={getattr(settings, name)!r} must be >= 0 (0 = no limit)")
    for name in ("keepalives_idle", "keepalives_interval", "keepalives_count"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name}={getattr(settings, name)!r} must be >= 1")
    for name in ("retention", "unreported_retention"):  # unreported rows keep max(both)
        if getattr(settings, name) < 0:
            raise ConfigError(f"{name}={getattr(settings, name)!r} must be >= 0")
    if settings.tasks_per_process < 1:
        raise ConfigError(f"tasks_per_process={settings.tasks_per_process!r} must be >= 1")
    if settings.start_retries < 0:
        raise ConfigError(f"start_retries={settings.start_retries!r} must be >= 0")
    if settings.queue_ahead < -1:
        raise ConfigError(
            f"queue_ahead={settings.queue_ahead!r} must be >= 0, or -1 (as many as [core] parallelism)"
        )
    if settings.allocator_batch_size < 1:
        raise ConfigError(f"allocator_batch_size={settings.allocator_batch_size!r} must be >= 1")


def validate_fencing(settings: Settings) -> None:
    """The runner's rule: a lease leaves room to fence. A runner that stops hearing from the database
    has at worst ``lease_timeout - heartbeat_interval`` left on its lease; SIGTERM, ``kill_grace``,
    SIGKILL and the margin must fit in it, so its tasks are dead before the database can call the
    lease expired (and Airflow retry them elsewhere) yet not fenced while heartbeats still arrive."""
    if settings.kill_grace < 0:
        raise ConfigError(f"kill_grace={settings.kill_grace!r} must be >= 0")
    needed = settings.heartbeat_interval + settings.kill_grace + FENCE_MARGIN
    if settings.lease_timeout <= needed:
        raise ConfigError(
            f"lease_timeout={settings.lease_timeout:g} leaves no room to fence: it must be more than "
            f"heartbeat_interval={settings.heartbeat_interval:g} + kill_grace={settings.kill_grace:g} + "
            f"{FENCE_MARGIN:g} s margin = {needed:g}, so that a runner cut off from the database has killed "
            "its tasks before the database calls its lease expired; raise lease_timeout or lower kill_grace"
        )


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and error messages."""
    redacted = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)", r"\1***", redacted)


def error_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none), password redacted:
    what a one-line log entry or error message says about a failure."""
    text = str(exc).strip()
    return redact_url(text.splitlines()[0] if text else type(exc).__name__)
