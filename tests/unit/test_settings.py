"""Settings: precedence of the five sources, the database URL, validation and redaction."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from runtime_executor.settings import (
    FENCE_MARGIN,
    ConfigError,
    Settings,
    airflow_database_url,
    check_schema_name,
    error_line,
    load_settings,
    redact_url,
    resolve_database_url,
    to_libpq_url,
    validate_fencing,
)

pytestmark = pytest.mark.usefixtures("clean_env")


# -- precedence: flag > RTX_ > AIRFLOW__RUNTIME_EXECUTOR__ > airflow.cfg > default --------------


LAYERS = ("cfg", "airflow_env", "rtx_env", "flag")


def _apply_layers(monkeypatch, write_cfg, name: str, values: dict[str, str]) -> dict:
    """Set ``name`` in each layer given in ``values``; return the flag overrides."""
    if "cfg" in values:
        write_cfg(f"[runtime_executor]\n{name} = {values['cfg']}\n")
    if "airflow_env" in values:
        monkeypatch.setenv(f"AIRFLOW__RUNTIME_EXECUTOR__{name.upper()}", values["airflow_env"])
    if "rtx_env" in values:
        monkeypatch.setenv(f"RTX_{name.upper()}", values["rtx_env"])
    return {name: values["flag"]} if "flag" in values else {}


@pytest.mark.parametrize("top", range(len(LAYERS)))
def test_highest_layer_wins_for_a_string_setting(monkeypatch, write_cfg, top):
    values = {layer: f"Strategy{layer}" for layer in LAYERS[: top + 1]}
    overrides = _apply_layers(monkeypatch, write_cfg, "strategy", values)
    assert load_settings(**overrides).strategy == f"Strategy{LAYERS[top]}"


@pytest.mark.parametrize("top", range(len(LAYERS)))
def test_highest_layer_wins_for_numbers_and_they_are_converted(monkeypatch, write_cfg, top):
    batch = {layer: str(10 + i) for i, layer in enumerate(LAYERS[: top + 1])}
    overrides = _apply_layers(monkeypatch, write_cfg, "allocator_batch_size", batch)
    if overrides:  # a flag arrives already converted by click
        overrides["allocator_batch_size"] = int(overrides["allocator_batch_size"])
    settings = load_settings(**overrides)
    assert settings.allocator_batch_size == 10 + top
    assert type(settings.allocator_batch_size) is int


def test_each_layer_alone_overrides_the_default(monkeypatch, write_cfg):
    assert load_settings().lease_timeout == Settings().lease_timeout == 20.0
    write_cfg("[runtime_executor]\nlease_timeout = 30\n")
    assert load_settings().lease_timeout == 30.0
    monkeypatch.setenv("AIRFLOW__RUNTIME_EXECUTOR__LEASE_TIMEOUT", "40")
    assert load_settings().lease_timeout == 40.0
    monkeypatch.setenv("RTX_LEASE_TIMEOUT", "50.5")
    assert load_settings().lease_timeout == 50.5
    assert load_settings(lease_timeout=60.0).lease_timeout == 60.0


def test_unset_flag_and_empty_variable_fall_through(monkeypatch, write_cfg):
    write_cfg("[runtime_executor]\nschema = from_cfg\n")
    monkeypatch.setenv("RTX_SCHEMA", "")
    monkeypatch.setenv("AIRFLOW__RUNTIME_EXECUTOR__SCHEMA", "from_airflow_env")
    assert load_settings(schema=None).schema == "from_airflow_env"
    monkeypatch.setenv("AIRFLOW__RUNTIME_EXECUTOR__SCHEMA", "")
    assert load_settings(schema=None).schema == "from_cfg"


def test_defaults_when_nothing_is_configured():
    settings = load_settings()
    assert settings.schema == "runtime_executor"
    assert settings.strategy == "EvenSpreadStrategy"
    assert settings.database_url == ""


def test_airflow_config_variable_points_at_another_file(monkeypatch, write_cfg, tmp_path):
    write_cfg("[runtime_executor]\nstrategy = FromHome\n")
    other = write_cfg("[runtime_executor]\nstrategy = FromAirflowConfig\n", tmp_path / "elsewhere" / "my.cfg")
    assert load_settings().strategy == "FromHome"
    monkeypatch.setenv("AIRFLOW_CONFIG", str(other))
    assert load_settings().strategy == "FromAirflowConfig"


def test_other_sections_of_airflow_cfg_are_ignored(write_cfg):
    write_cfg("[core]\nstrategy = Wrong\nschema = wrong\n[runtime_executor]\nlog_level = debug\n")
    settings = load_settings()
    assert settings.strategy == "EvenSpreadStrategy"
    assert settings.schema == "runtime_executor"
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RTX_ALLOCATOR_BATCH_SIZE", "lots"),
        ("RTX_ALLOCATOR_BATCH_SIZE", "2.5"),
        ("RTX_LEASE_TIMEOUT", "soon"),
        ("AIRFLOW__RUNTIME_EXECUTOR__HEARTBEAT_INTERVAL", "1s"),
    ],
)
def test_unconvertible_value_names_the_setting_and_value(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    name = variable.removeprefix("RTX_").removeprefix("AIRFLOW__RUNTIME_EXECUTOR__").lower()
    assert name in str(info.value)
    assert value in str(info.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("Yes", True),
        (" on ", True),
        ("1", True),
        ("false", False),
        ("NO", False),
        ("off", False),
        ("0", False),
    ],
)
def test_boolean_settings_are_parsed_not_truthy(monkeypatch, raw, expected):
    monkeypatch.setenv("RTX_ENFORCE_MEMORY", raw)
    assert load_settings().enforce_memory is expected


def test_unknown_boolean_is_refused(write_cfg):
    write_cfg("[runtime_executor]\nenforce_memory = maybe\n")
    with pytest.raises(ConfigError, match="enforce_memory"):
        load_settings()


def test_unconvertible_value_in_airflow_cfg_is_a_config_error(write_cfg):
    write_cfg("[runtime_executor]\nretention = a day\n")
    with pytest.raises(ConfigError, match="retention"):
        load_settings()


def test_isolation_settings_from_airflow_cfg_and_environment(monkeypatch, write_cfg):
    write_cfg("[runtime_executor]\nisolation = cgroup\ncgroup_root = /rtx\n")
    monkeypatch.setenv("AIRFLOW__RUNTIME_EXECUTOR__CPU_LIMIT", "true")
    settings = load_settings()
    assert (settings.isolation, settings.cgroup_root, settings.cpu_limit) == ("cgroup", "/rtx", True)
    assert load_settings(isolation="none").isolation == "none"  # the flag wins
    monkeypatch.setenv("RTX_ISOLATION", "docker")
    with pytest.raises(ConfigError, match="isolation='docker' must be one of none, cgroup"):
        load_settings()


# -- database URL --------------------------------------------------------------------------------


def test_database_defaults_to_airflows_connection_without_driver(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg://af:pw@db.example:6543/airflow"
    )
    url = load_settings().database_url
    assert url == "postgresql://af:pw@db.example:6543/airflow"
    # libpq (psycopg) accepts it as is.
    assert conninfo_to_dict(url) == {
        "host": "db.example",
        "port": "6543",
        "user": "af",
        "password": "pw",
        "dbname": "airflow",
    }


@pytest.mark.parametrize(
    ("section", "variable"),
    [("database", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"), ("core", "AIRFLOW__CORE__SQL_ALCHEMY_CONN")],
)
def test_airflow_connection_from_cfg_or_legacy_core_section(monkeypatch, write_cfg, section, variable):
    write_cfg(f"[{section}]\nsql_alchemy_conn = postgresql+psycopg2://cfg@h/from_cfg\n")
    assert load_settings().database_url == "postgresql://cfg@h/from_cfg"
    monkeypatch.setenv(variable, "postgresql+psycopg://env@h/from_env")
    assert load_settings().database_url == "postgresql://env@h/from_env"


def test_rtx_database_url_overrides_airflows_and_is_converted_too(monkeypatch):
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg://af@h/airflow")
    monkeypatch.setenv("RTX_DATABASE_URL", "postgresql+psycopg://rtx@h2/rtx")
    assert load_settings().database_url == "postgresql://rtx@h2/rtx"
    assert load_settings(database_url="postgres://flag@h3/db").database_url == "postgresql://flag@h3/db"


def test_rtx_database_url_on_postgres_with_airflow_not_on_postgres(monkeypatch):
    """rtx may have its own Postgres while Airflow's metadata database is something else."""
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "mysql+mysqldb://af@h/airflow")
    monkeypatch.setenv("RTX_DATABASE_URL", "postgresql://rtx@h/rtx")
    assert load_settings().database_url == "postgresql://rtx@h/rtx"


@pytest.mark.parametrize(
    "url",
    ["sqlite:////tmp/airflow.db", "mysql+mysqldb://u:p@h/airflow", "mssql+pyodbc://u@h/db", "sqlite://"],
)
def test_non_postgres_database_is_refused(monkeypatch, url):
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", url)
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    with pytest.raises(ConfigError, match=scheme):
        load_settings()
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    monkeypatch.setenv("RTX_DATABASE_URL", url)
    with pytest.raises(ConfigError, match=scheme):
        load_settings()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql+psycopg://u:p@h:1/d", "postgresql://u:p@h:1/d"),
        ("postgresql+psycopg2://u@h/d?sslmode=require", "postgresql://u@h/d?sslmode=require"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("postgres://u@h/d", "postgresql://u@h/d"),
        ("host=h port=5 dbname=d user=u", "host=h port=5 dbname=d user=u"),
    ],
)
def test_to_libpq_url(given, expected):
    assert to_libpq_url(given) == expected


def test_airflow_database_url_is_empty_without_any_connection():
    assert airflow_database_url() == ""
    assert airflow_database_url({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg://x@h/d"}) == (
        "postgresql://x@h/d"
    )


def test_airflows_own_url_is_used_when_the_caller_passes_it(monkeypatch):
    """The shim and the status page pass Airflow's ``sql_alchemy_conn`` (from Airflow's config, which
    also knows ``_SECRET``): it replaces what the environment alone would give, RTX_DATABASE_URL still
    wins, and a non-PostgreSQL one is refused like any other."""
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg://env@h/from_env")
    from_conf = "postgresql+psycopg://conf:pw@h/from_conf"
    assert load_settings(airflow_url=from_conf).database_url == "postgresql://conf:pw@h/from_conf"
    assert load_settings().database_url == "postgresql://env@h/from_env"
    monkeypatch.setenv("RTX_DATABASE_URL", "postgresql://rtx@h/rtx")
    assert load_settings(airflow_url=from_conf).database_url == "postgresql://rtx@h/rtx"
    monkeypatch.delenv("RTX_DATABASE_URL")
    with pytest.raises(ConfigError, match="sqlite"):
        load_settings(airflow_url="sqlite:////tmp/airflow.db")


def test_resolve_database_url_order():
    env = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://env@h/e"}
    assert resolve_database_url("postgres://c@h/c", env, "postgresql://a@h/a") == "postgresql://c@h/c"
    assert resolve_database_url("", env, "postgresql+psycopg://a@h/a") == "postgresql://a@h/a"
    assert resolve_database_url("", env) == "postgresql://env@h/e"
    assert resolve_database_url("", {}) == ""


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    ["Runtime", "1rtx", "rtx-executor", 'rtx"; DROP TABLE x; --', "rtx.schema", "r" * 64, "", "rtx schema"],
)
def test_bad_schema_names_are_refused(schema):
    with pytest.raises(ConfigError, match="schema"):
        load_settings(schema=schema)


@pytest.mark.parametrize("schema", ["rtx", "_rtx", "rtx_2", "r" * 63])
def test_good_schema_names_are_accepted(monkeypatch, schema):
    monkeypatch.setenv("RTX_SCHEMA", schema)
    assert load_settings().schema == schema


@pytest.mark.parametrize("schema", ["Runtime", 'rtx"; DROP TABLE x; --', "r" * 64, ""])
def test_the_gateway_refuses_a_bad_schema_with_the_same_check(schema):
    """One check: the SQL of a named query is never built for a name settings would refuse."""
    from runtime_executor.db.gateway import query

    with pytest.raises(ConfigError, match="must be a lower-case SQL identifier"):
        check_schema_name(schema)
    with pytest.raises(ConfigError, match="must be a lower-case SQL identifier"):
        query("count_by_state", schema)
    assert '"rtx_2".' in query("count_by_state", check_schema_name("rtx_2"))


def test_bad_schema_from_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("RTX_SCHEMA", "Public")
    with pytest.raises(ConfigError, match="Public"):
        load_settings()


@pytest.mark.parametrize(
    ("lease", "heartbeat"),
    [(4.0, 2.0), (3.9, 2.0), (1.0, 2.0), (20.0, 10.0)],
)
def test_lease_must_be_more_than_twice_the_heartbeat(lease, heartbeat):
    with pytest.raises(ConfigError) as info:
        load_settings(lease_timeout=lease, heartbeat_interval=heartbeat)
    assert "lease_timeout" in str(info.value) and "heartbeat_interval" in str(info.value)


@pytest.mark.parametrize(("lease", "heartbeat"), [(4.01, 2.0), (3.0, 0.5), (20.0, 2.0)])
def test_lease_more_than_twice_the_heartbeat_is_accepted(lease, heartbeat):
    settings = load_settings(lease_timeout=lease, heartbeat_interval=heartbeat)
    assert (settings.lease_timeout, settings.heartbeat_interval) == (lease, heartbeat)


def test_heartbeat_raised_by_environment_alone_conflicts_with_default_lease(monkeypatch):
    monkeypatch.setenv("RTX_HEARTBEAT_INTERVAL", "10")
    with pytest.raises(ConfigError, match="lease_timeout"):
        load_settings()


@pytest.mark.parametrize(
    "overrides",
    [
        {"heartbeat_interval": 0.0},
        {"heartbeat_interval": -1.0},
        {"allocator_poll_interval": 0.0},
        {"runner_poll_interval": -0.5},
        {"allocator_batch_size": 0},
    ],
)
def test_non_positive_intervals_and_batch_size_are_refused(overrides):
    (name,) = overrides
    with pytest.raises(ConfigError, match=name):
        load_settings(**overrides)


# -- redaction -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://rtx:s3cretpw@db.example:5432/airflow",
        "postgresql+psycopg://rtx:s3cretpw@db.example/airflow?sslmode=require",
        "postgresql://:s3cretpw@db.example/airflow",
        "postgresql://rtx:s3cr/et:pw@db.example/airflow",
        "postgresql://rtx@db.example/airflow?password=s3cretpw",
        "postgresql://db.example/airflow?user=rtx&password=s3cretpw&sslmode=require",
        "host=db.example user=rtx password=s3cretpw dbname=airflow",
        "host=db.example password = s3cretpw dbname=airflow",
        "cannot connect to postgresql://rtx:s3cretpw@db.example/airflow: connection refused",
    ],
)
def test_redact_url_hides_the_password(url):
    redacted = redact_url(url)
    for part in ("s3cretpw", "s3cr", "pw@"):
        assert part not in redacted
    # what is not secret stays readable
    assert "db.example" in redacted


def test_redact_url_keeps_the_rest_of_the_url():
    assert redact_url("postgresql://rtx:s3cretpw@db:5432/airflow") == "postgresql://rtx:***@db:5432/airflow"
    assert redact_url("host=db password=s3cretpw dbname=airflow") == "host=db password=*** dbname=airflow"


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://rtx@db.example:5432/airflow",
        "postgresql://db.example/airflow",
        "host=db.example port=5432 dbname=airflow",
        "connection to server at 127.0.0.1, port 1 failed",
    ],
)
def test_redact_url_leaves_text_without_password_alone(text):
    assert redact_url(text) == text


def test_redact_url_hides_every_url_in_a_message():
    text = "primary postgresql://a:first_pw@h1/d failed, then postgresql://b:second_pw@h2/d failed"
    redacted = redact_url(text)
    assert "first_pw" not in redacted and "second_pw" not in redacted
    assert "h1/d" in redacted and "h2/d" in redacted


def test_redact_url_hides_a_quoted_keyword_password():
    conninfo = "host=db.example password='s3cret pw2' dbname=airflow"
    assert conninfo_to_dict(conninfo)["password"] == "s3cret pw2"  # libpq's own reading of it
    redacted = redact_url(conninfo)
    assert "s3cret" not in redacted
    assert "pw2" not in redacted


def test_database_url_from_airflows_conn_cmd(monkeypatch, write_cfg):
    monkeypatch.setenv(
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", "echo postgresql+psycopg://af:pw@db.example/airflow"
    )
    assert airflow_database_url() == "postgresql://af:pw@db.example/airflow"
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD")
    write_cfg("[database]\nsql_alchemy_conn_cmd = echo postgresql://cfg@db.example/af\n")
    assert airflow_database_url() == "postgresql://cfg@db.example/af"
    write_cfg("[database]\nsql_alchemy_conn_cmd = exit 3\n")
    with pytest.raises(ConfigError, match="exited with code 3"):
        airflow_database_url()


@pytest.mark.parametrize(
    ("lease", "heartbeat", "grace"),
    [(20.0, 2.0, 5.0), (3.0, 0.5, 1.0), (8.01, 2.0, 5.0), (2.0, 0.5, 0.0)],
)
def test_a_lease_with_room_to_fence_is_accepted(lease, heartbeat, grace):
    validate_fencing(load_settings(lease_timeout=lease, heartbeat_interval=heartbeat, kill_grace=grace))


@pytest.mark.parametrize(
    ("lease", "heartbeat", "grace"),
    [(8.0, 2.0, 5.0), (5.0, 1.0, 5.0), (3.0, 0.5, 5.0), (3.0, 0.5, 1.5)],
)
def test_a_lease_without_room_to_fence_is_refused_naming_every_part(lease, heartbeat, grace):
    """lease_timeout > heartbeat_interval + kill_grace + FENCE_MARGIN, or a cut-off runner's SIGKILL
    could come after the database called its lease expired (issue 11, item 6)."""
    settings = load_settings(lease_timeout=lease, heartbeat_interval=heartbeat, kill_grace=grace)
    with pytest.raises(ConfigError) as info:
        validate_fencing(settings)
    message = str(info.value)
    assert f"lease_timeout={lease:g}" in message and f"heartbeat_interval={heartbeat:g}" in message
    assert f"kill_grace={grace:g}" in message and f"{FENCE_MARGIN:g} s margin" in message


def test_the_default_settings_leave_room_to_fence():
    validate_fencing(load_settings())


def test_a_negative_kill_grace_is_refused():
    with pytest.raises(ConfigError, match="kill_grace"):
        validate_fencing(load_settings(kill_grace=-1.0))


def test_start_retries_default_and_bounds(monkeypatch):
    assert load_settings().start_retries == 3
    monkeypatch.setenv("RTX_START_RETRIES", "0")
    assert load_settings().start_retries == 0
    monkeypatch.setenv("RTX_START_RETRIES", "-1")
    with pytest.raises(ConfigError, match="start_retries"):
        load_settings()


def test_error_line_is_the_first_line_redacted_or_the_type():
    exc = RuntimeError('connection to "postgresql://u:secret@h/db" failed\nDETAIL: more\nHINT: x')
    assert error_line(exc) == 'connection to "postgresql://u:***@h/db" failed'
    assert error_line(RuntimeError("  \n ")) == "RuntimeError"
    assert error_line(TimeoutError()) == "TimeoutError"


def test_queue_ahead_default_and_bounds(monkeypatch):
    assert load_settings().queue_ahead == 0
    monkeypatch.setenv("AIRFLOW__RUNTIME_EXECUTOR__QUEUE_AHEAD", "-1")  # as many as [core] parallelism
    assert load_settings().queue_ahead == -1
    monkeypatch.setenv("AIRFLOW__RUNTIME_EXECUTOR__QUEUE_AHEAD", "-2")
    with pytest.raises(ConfigError, match="queue_ahead=-2"):
        load_settings()
