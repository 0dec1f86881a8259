"""Resource requests: every accepted form, every rejection, runtime_config and request_from_task."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_executor.resources import (
    MAX_CPU,
    MAX_MEMORY_MB,
    MAX_SLOTS,
    BadResourceRequest,
    ResourceRequest,
    parse_cpu,
    parse_memory_mb,
    parse_runtime,
    request_from_task,
    runtime_config,
)

# -- accepted forms (expected values worked out by hand: MB = MiB, GB = GiB = 1024 MB) -----------


@pytest.mark.parametrize(
    ("value", "cores"),
    [(2, 2.0), (1.5, 1.5), (0, 0.0), (0.25, 0.25), ("1.5", 1.5), ("2", 2.0), (" 4 ", 4.0), ("0.1", 0.1)],
)
def test_cpu_accepted_forms(value, cores):
    assert parse_runtime({"cpu": value}) == ResourceRequest(cpu=cores)
    assert isinstance(parse_cpu(value), float)


@pytest.mark.parametrize(
    ("value", "mb"),
    [
        (1024, 1024),
        ("1024", 1024),
        ("1024MB", 1024),
        ("1024mb", 1024),
        ("1024 MB", 1024),
        ("1024MiB", 1024),
        ("512Mi", 512),
        ("1GiB", 1024),
        ("1GB", 1024),
        ("1G", 1024),
        ("2Gi", 2048),
        ("1.5GB", 1536),
        ("0.5GiB", 512),
        ("1TiB", 1024 * 1024),
        ("2048KiB", 2),
        ("1e3", 1000),
        (0, 0),
        ("0MB", 0),
        (512.0, 512),
    ],
)
def test_memory_accepted_forms(value, mb):
    assert parse_runtime({"memory": value}) == ResourceRequest(memory_mb=mb)
    assert type(parse_memory_mb(value)) is int


@pytest.mark.parametrize(("value", "mb"), [(1024, 1024), ("1024", 1024), (512.0, 512), (0, 0)])
def test_memory_mb_accepted_forms(value, mb):
    assert parse_runtime({"memory_mb": value}) == ResourceRequest(memory_mb=mb)


@pytest.mark.parametrize(
    ("value", "mb"),
    [
        (1024.2, 1025),
        ("1024.01MB", 1025),
        ("0.5", 1),
        ("0.001", 1),
        ("1.0001GiB", 1025),  # 1024.1024 MB
        ("1536KiB", 2),  # 1.5 MB
        ("1KB", 1),
        ("1.1GB", 1127),  # 1126.4 MB
    ],
)
def test_memory_rounds_up_to_a_whole_mb(value, mb):
    assert parse_memory_mb(value) == mb


def test_memory_int_and_string_forms_agree():
    assert parse_memory_mb(1536) == parse_memory_mb("1536") == parse_memory_mb("1.5GiB") == 1536


@pytest.mark.parametrize(
    ("value", "slots"), [(1, 1), (2, 2), ("2", 2), (" 3 ", 3), (2.0, 2), (64, 64), ("64", 64)]
)
def test_slots_accepted_forms(value, slots):
    request = parse_runtime({"slots": value})
    assert request == ResourceRequest(slots=slots)
    assert type(request.slots) is int


def test_empty_runtime_means_defaults():
    assert parse_runtime({}) == ResourceRequest(slots=1, cpu=0.0, memory_mb=0)


def test_all_keys_together():
    assert parse_runtime({"cpu": "0.5", "memory": "2GiB", "slots": "3"}) == ResourceRequest(
        slots=3, cpu=0.5, memory_mb=2048
    )


# -- rejections: the message names the key and the value ----------------------------------------


def _rejects(spec: dict, *fragments: str) -> str:
    with pytest.raises(BadResourceRequest) as info:
        parse_runtime(spec)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pytest.mark.parametrize(
    ("spec", "bad_key"),
    [({"gpu": 1}, "gpu"), ({"cpus": 2}, "cpus"), ({"ram": 1024}, "ram"), ({"cpu": 1, "Slots": 2}, "Slots")],
)
def test_unknown_key_is_rejected_by_name(spec, bad_key):
    message = _rejects(spec, bad_key)
    # and says what is allowed
    assert "cpu" in message and "memory" in message and "slots" in message


@pytest.mark.parametrize(
    ("spec", "key", "value"),
    [
        ({"cpu": -1}, "cpu", "-1"),
        ({"cpu": -0.5}, "cpu", "-0.5"),
        ({"cpu": "-2"}, "cpu", "-2"),
        ({"memory": -5}, "memory", "-5"),
        ({"memory": "-5MB"}, "memory", "-5MB"),
        ({"memory_mb": -1}, "memory_mb", "-1"),
        ({"slots": -1}, "slots", "-1"),
    ],
)
def test_negative_values_are_rejected(spec, key, value):
    _rejects(spec, key, value)


@pytest.mark.parametrize(
    ("spec", "key", "value"),
    [
        ({"cpu": math.nan}, "cpu", "nan"),
        ({"cpu": math.inf}, "cpu", "inf"),
        ({"cpu": "nan"}, "cpu", "nan"),
        ({"cpu": "inf"}, "cpu", "inf"),
        ({"cpu": "-inf"}, "cpu", "-inf"),
        ({"cpu": "1e400"}, "cpu", "1e400"),
        ({"memory": math.nan}, "memory", "nan"),
        ({"memory": math.inf}, "memory", "inf"),
        ({"memory": "inf"}, "memory", "inf"),
        ({"memory": "1e400MB"}, "memory", "1e400MB"),
        ({"memory_mb": math.inf}, "memory_mb", "inf"),
        ({"slots": math.nan}, "slots", "nan"),
        ({"slots": math.inf}, "slots", "inf"),
    ],
)
def test_nan_and_infinity_are_rejected(spec, key, value):
    _rejects(spec, key, value)


@pytest.mark.parametrize(
    ("spec", "key", "value"),
    [
        ({"cpu": "lots"}, "cpu", "lots"),
        ({"cpu": "1.5 cores"}, "cpu", "1.5 cores"),
        ({"cpu": None}, "cpu", "None"),
        ({"cpu": [1]}, "cpu", "[1]"),
        ({"memory": "lots"}, "memory", "lots"),
        ({"memory": "1024 bytes"}, "memory", "1024 bytes"),
        ({"memory": "1,024MB"}, "memory", "1,024MB"),
        ({"memory": "GiB"}, "memory", "GiB"),
        ({"memory": ""}, "memory", "''"),
        ({"memory": "12 apples"}, "memory", "12 apples"),
        ({"memory": None}, "memory", "None"),
        ({"memory": {"mb": 1}}, "memory", "{'mb': 1}"),
        ({"memory_mb": "lots"}, "memory_mb", "lots"),
        ({"slots": "two"}, "slots", "two"),
        ({"slots": ""}, "slots", "''"),
        ({"slots": None}, "slots", "None"),
    ],
)
def test_unparsable_values_are_rejected(spec, key, value):
    _rejects(spec, key, value)


@pytest.mark.parametrize("key", ["cpu", "memory", "memory_mb", "slots"])
@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_rejected(key, value):
    _rejects({key: value}, key, str(value))


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "0"),
        (65, "65"),
        ("65", "65"),
        (MAX_SLOTS + 1, str(MAX_SLOTS + 1)),
        (1000, "1000"),
        (1.5, "1.5"),
        ("1.5", "1.5"),
    ],
)
def test_slots_outside_1_to_64_or_fractional_are_rejected(value, shown):
    _rejects({"slots": value}, "slots", shown)


def test_memory_and_memory_mb_together_are_rejected():
    _rejects({"memory": "1GiB", "memory_mb": 1024}, "memory", "memory_mb")


@pytest.mark.parametrize("spec", ["big", 2, ["cpu", 1], None])
def test_runtime_that_is_not_a_dict_is_rejected(spec):
    with pytest.raises(BadResourceRequest, match="runtime"):
        parse_runtime(spec)


def test_bad_request_is_a_value_error():
    # Callers that catch ValueError (the daemons' start-up errors) also catch it.
    assert issubclass(BadResourceRequest, ValueError)


@pytest.mark.parametrize("value", ["²", "2³"])
def test_superscript_digit_slots_are_a_bad_request(value):
    with pytest.raises(BadResourceRequest, match="slots"):
        parse_runtime({"slots": value})


# -- runtime_config ------------------------------------------------------------------------------


def test_runtime_config_builds_the_executor_config():
    assert runtime_config(cpu=1.5, memory="1GiB", slots=2) == {
        "runtime": {"cpu": 1.5, "memory": "1GiB", "slots": 2}
    }
    assert runtime_config(memory=512) == {"runtime": {"memory": 512}}
    assert runtime_config() == {"runtime": {}}


def test_runtime_config_result_is_what_the_shim_reads():
    config = runtime_config(cpu="0.5", memory="1.5GB", slots="4")
    assert request_from_task(config) == ResourceRequest(slots=4, cpu=0.5, memory_mb=1536)


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"slots": 65}, ("slots", "65")),
        ({"slots": 0}, ("slots", "0")),
        ({"cpu": -1}, ("cpu", "-1")),
        ({"cpu": "many"}, ("cpu", "many")),
        ({"memory": "lots"}, ("memory", "lots")),
        ({"memory": math.nan}, ("memory", "nan")),
    ],
)
def test_runtime_config_validates_at_parse_time(kwargs, fragments):
    with pytest.raises(BadResourceRequest) as info:
        runtime_config(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_runtime_config_is_accepted_by_airflow_operators():
    from airflow.providers.standard.operators.empty import EmptyOperator

    task = EmptyOperator(task_id="t", executor_config=runtime_config(cpu=1.5, memory="1GiB", slots=2))
    assert request_from_task(task.executor_config, task.resources) == ResourceRequest(
        slots=2, cpu=1.5, memory_mb=1024
    )


# -- request_from_task: executor_config["runtime"] > Airflow Resources > defaults -------------------


def _airflow_resources(**kwargs):
    from airflow.sdk.definitions.operator_resources import Resources

    return Resources(**kwargs)


def test_runtime_wins_over_airflow_resources():
    resources = _airflow_resources(cpus=1.5, ram=1024)
    assert request_from_task({"runtime": {"cpu": 0.5, "slots": 3}}, resources) == ResourceRequest(
        slots=3, cpu=0.5, memory_mb=0
    )
    # even an empty runtime section means "use rtx's defaults", not Airflow's resources
    assert request_from_task({"runtime": {}}, resources) == ResourceRequest()


def test_airflow_resources_used_without_runtime():
    resources = _airflow_resources(cpus=1.5, ram=1024)
    expected = ResourceRequest(slots=1, cpu=1.5, memory_mb=1024)
    assert request_from_task(None, resources) == expected
    assert request_from_task({}, resources) == expected
    assert request_from_task({"pod_override": "something else"}, resources) == expected


def test_airflow_resources_from_a_real_operator():
    from airflow.providers.standard.operators.empty import EmptyOperator

    task = EmptyOperator(task_id="t", resources={"cpus": 2.5, "ram": 3072})
    assert request_from_task(task.executor_config, task.resources) == ResourceRequest(
        slots=1, cpu=2.5, memory_mb=3072
    )


def test_defaults_when_neither_is_given():
    assert request_from_task(None) == ResourceRequest(slots=1, cpu=0.0, memory_mb=0)
    assert request_from_task({}, None) == ResourceRequest(slots=1, cpu=0.0, memory_mb=0)
    assert request_from_task({"other_executor": {"cpu": 8}}) == ResourceRequest()


def test_bad_runtime_is_not_masked_by_airflow_resources():
    with pytest.raises(BadResourceRequest, match="65"):
        request_from_task({"runtime": {"slots": 65}}, _airflow_resources(cpus=1, ram=512))


def test_describe_shows_all_three_amounts():
    text = ResourceRequest(slots=3, cpu=1.5, memory_mb=2048).describe()
    assert "1.5" in text and "2048" in text and "3" in text


# -- property: any valid request round-trips through runtime_config / parse_runtime ---------------

_UNITS = {
    "": 1,
    "MB": 1,
    "Mi": 1,
    "MiB": 1,
    "mb": 1,
    "GB": 1024,
    "GiB": 1024,
    "Gi": 1024,
    "G": 1024,
    "TiB": 1024**2,
}

_memory = st.one_of(
    st.integers(min_value=0, max_value=10**7).map(lambda n: (n, n)),
    st.tuples(st.integers(min_value=0, max_value=4096), st.sampled_from(sorted(_UNITS))).map(
        lambda p: (f"{p[0]}{p[1]}", p[0] * _UNITS[p[1]])
    ),
    # a half unit: n.5 GiB is exact in binary floating point
    st.integers(min_value=0, max_value=4096).map(lambda n: (f"{n}.5GiB", n * 1024 + 512)),
)
_cpu = st.one_of(
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False).map(lambda c: (c, c)),
    st.integers(min_value=0, max_value=512).map(lambda c: (str(c), float(c))),
    st.decimals(min_value=0, max_value=1000, places=2).map(lambda d: (str(d), float(str(d)))),
)
_slots = st.integers(min_value=1, max_value=MAX_SLOTS).flatmap(
    lambda n: st.sampled_from([(n, n), (str(n), n), (float(n), n)])
)


@given(
    cpu=st.none() | _cpu,
    memory=st.none() | _memory,
    slots=st.none() | _slots,
)
def test_any_valid_request_round_trips(cpu, memory, slots):
    config = runtime_config(
        cpu=None if cpu is None else cpu[0],
        memory=None if memory is None else memory[0],
        slots=None if slots is None else slots[0],
    )
    expected = ResourceRequest(
        slots=1 if slots is None else slots[1],
        cpu=0.0 if cpu is None else cpu[1],
        memory_mb=0 if memory is None else memory[1],
    )
    request = parse_runtime(config["runtime"])
    assert request == expected
    assert request_from_task(config) == expected
    # and the parsed request, written back as a config, parses to itself
    again = runtime_config(cpu=request.cpu, memory=request.memory_mb, slots=request.slots)
    assert parse_runtime(again["runtime"]) == request


# -- property: no DAG input raises anything but BadResourceRequest (issue 11, item 2) ------------

# (hypothesis must be able to print an example: no int of more than 4,300 digits here; the
# parametrized test below has those)
_HUGE_INTS = st.sampled_from([2**63, 10**400, -(10**400), 10**4000, 2**40 + 1, 2**64 * 1024])
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | _HUGE_INTS
    | st.floats()  # nan, inf, -inf, subnormals, -0.0 included
    | st.text(max_size=20)
    | st.sampled_from(
        ["nan", "inf", "-inf", "1e400MB", "1e308TiB", "9" * 5000, "1" * 5000 + "GiB", "²", "1_000"]
    )
)
_NUMERIC_TEXT = st.builds(
    lambda number, unit: f"{number}{unit}",
    st.one_of(
        st.integers(min_value=0).map(str),
        st.floats(min_value=0, allow_nan=False).map(repr),
        st.integers(min_value=0, max_value=400).map(lambda e: f"1e{e}"),
        st.integers(min_value=4290, max_value=4400).map(lambda n: "7" * n),
    ),
    st.sampled_from(["", "MB", "GiB", "TiB", "T", "k", " mb", "XB"]),
)
_JSON = st.recursive(
    _SCALARS | _NUMERIC_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_RUNTIME_LIKE = st.dictionaries(
    st.sampled_from(["cpu", "memory", "memory_mb", "slots"]) | st.text(max_size=6) | _HUGE_INTS,
    _JSON,
    max_size=4,
)


def _valid_or_bad(parse) -> None:
    """``parse()`` returns a request the database and the allocator accept, or raises BadResourceRequest
    with a short message; nothing else ever escapes (an escape would reach the scheduler)."""
    try:
        request = parse()
    except BadResourceRequest as exc:
        message = str(exc)
        assert message and len(message) < 1000, message[:200]
        return
    assert isinstance(request, ResourceRequest)
    assert type(request.slots) is int and 1 <= request.slots <= MAX_SLOTS
    assert type(request.cpu) is float and math.isfinite(request.cpu) and 0 <= request.cpu <= MAX_CPU
    assert type(request.memory_mb) is int and 0 <= request.memory_mb <= MAX_MEMORY_MB


@settings(max_examples=400, deadline=None)
@given(value=_JSON)
def test_any_executor_config_parses_or_is_a_bad_request(value):
    _valid_or_bad(lambda: request_from_task(value))
    _valid_or_bad(lambda: request_from_task({"runtime": value}))


@settings(max_examples=400, deadline=None)
@given(spec=_RUNTIME_LIKE)
def test_any_runtime_section_parses_or_is_a_bad_request(spec):
    _valid_or_bad(lambda: request_from_task({"runtime": spec}))
    _valid_or_bad(lambda: parse_runtime(spec))


class _Quantity:
    def __init__(self, qty):
        self.qty = qty


class _Resources:
    """What the serialized DAG hands the shim for ``resources=``: objects with ``.cpus.qty``/``.ram.qty``."""

    def __init__(self, cpus, ram):
        self.cpus, self.ram = _Quantity(cpus), _Quantity(ram)


@settings(max_examples=400, deadline=None)
@given(cpus=_JSON, ram=_JSON)
def test_any_airflow_resources_parse_or_are_a_bad_request(cpus, ram):
    _valid_or_bad(lambda: request_from_task(None, _Resources(cpus, ram)))
    try:
        # Airflow's own Resources validates some values itself (at DAG parse time, not in the scheduler)
        real = _airflow_resources(cpus=cpus, ram=ram)
    except Exception:  # noqa: BLE001 - Airflow rejected it before rtx could see it
        return
    _valid_or_bad(lambda: request_from_task(None, real))


@pytest.mark.parametrize(
    ("spec", "shown"),
    [
        ({"memory": "1e308TiB"}, "1e308TiB"),
        ({"memory": "1e400MB"}, "1e400MB"),
        ({"cpu": 10**400}, "cpu="),
        ({"memory": 10**400}, "memory="),
        ({"slots": "1" * 5000}, "slots="),
        ({"memory": 10**5000}, "memory="),
        ({10**5000: 1}, "unknown key"),
    ],
    ids=[
        "1e308TiB",
        "1e400MB",
        "cpu-10e400",
        "memory-10e400",
        "slots-5000-digits",
        "memory-10e5000",
        "huge-key",
    ],
)
def test_absurd_values_are_bad_requests_that_name_the_value(spec, shown):
    with pytest.raises(BadResourceRequest) as info:
        parse_runtime(spec)
    assert shown in str(info.value)
    assert len(str(info.value)) < 1000
