"""Task resource requests: what a task asks for, parsed and validated without Airflow.

A task declares ``executor_config={"runtime": {"cpu": 1.5, "memory": "1GiB", "slots": 2}}``
(build it with :func:`runtime_config`). Units: ``cpu`` in cores (fractional), ``memory`` in MB
where MB and MiB both mean 2**20 bytes (as Airflow's ``ram`` and Nomad do) and GB/GiB mean 1024 MB,
``slots`` an integer 1..64. Without a ``runtime`` key, Airflow's ``Resources(cpus=, ram=)`` counts
as cpu/memory. Anything malformed raises :class:`BadResourceRequest` naming the key and value.

Invariant (DESIGN.md "Failure model"): no value a DAG can put in ``executor_config`` or
``resources=`` makes these functions raise anything but :class:`BadResourceRequest`, and a request
they return always fits the database columns (slots 1..64, finite cpu 0..MAX_CPU, memory
0..MAX_MEMORY_MB). Values are shown with :func:`_show`: bounded, and never raising itself (the
repr of an int of more than 4,300 digits raises ValueError).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

MAX_SLOTS = 64
MAX_MEMORY_MB = 2**40  # 1 EiB: anything larger is a typo, and would not fit the database column
MAX_CPU = 1e6
RUNTIME_KEY = "runtime"
ALLOWED_KEYS = ("cpu", "memory", "memory_mb", "slots")

_MEMORY_UNITS = {
    "": 1,
    "m": 1,
    "mb": 1,
    "mib": 1,
    "mi": 1,
    "g": 1024,
    "gb": 1024,
    "gib": 1024,
    "gi": 1024,
    "t": 1024 * 1024,
    "tb": 1024 * 1024,
    "tib": 1024 * 1024,
    "ti": 1024 * 1024,
    "k": 1 / 1024,
    "kb": 1 / 1024,
    "kib": 1 / 1024,
    "ki": 1 / 1024,
}
_MEMORY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*$")


class BadResourceRequest(ValueError):
    """A resource request that can never be honoured; the message names the key and the value."""


_SHOW_MAX = 80


def _show(value: Any) -> str:
    """``repr(value)`` for a message: at most ~100 characters, and it never raises."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. ValueError: an int of more than 4,300 digits
        return f"<{type(value).__name__} too large to show>"
    if len(text) > _SHOW_MAX:
        return f"{text[: _SHOW_MAX - 20]}...{text[-10:]} ({len(text)} characters)"
    return text


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """What one allocation reserves on a runner for its whole life."""

    slots: int = 1
    cpu: float = 0.0
    memory_mb: int = 0

    def describe(self) -> str:
        return f"cpu {format_cpu(self.cpu)}, memory {self.memory_mb} MB, slots {self.slots}"


def format_cpu(cpu: float) -> str:
    return f"{cpu:g}"


def parse_cpu(value: Any, *, key: str = "cpu") -> float:
    if isinstance(value, bool):
        raise BadResourceRequest(f"{key}={_show(value)} is not a number of cores")
    try:
        cpu = float(value)
    except OverflowError:  # an int too large for a float
        raise BadResourceRequest(
            f"{key}={_show(value)} must be a number of cores from 0 to {MAX_CPU:g}"
        ) from None
    except (TypeError, ValueError):
        raise BadResourceRequest(f"{key}={_show(value)} is not a number of cores (e.g. 1.5)") from None
    if not math.isfinite(cpu) or cpu < 0 or cpu > MAX_CPU:
        raise BadResourceRequest(f"{key}={_show(value)} must be a number of cores from 0 to {MAX_CPU:g}")
    return cpu


def parse_memory_mb(value: Any, *, key: str = "memory") -> int:
    """``1024``, ``"1024MB"``, ``"1GiB"``, ``"1.5GB"`` -> MB (rounded up to a whole MB)."""
    if isinstance(value, bool):
        raise BadResourceRequest(f"{key}={_show(value)} is not an amount of memory")
    if isinstance(value, int) and not 0 <= value <= MAX_MEMORY_MB:
        # before float(): an int beyond a float's range raises OverflowError there
        raise BadResourceRequest(f"{key}={_show(value)} must be from 0 to {MAX_MEMORY_MB} MB")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    elif isinstance(value, str):
        match = _MEMORY_RE.match(value)
        if not match or match.group(2).lower() not in _MEMORY_UNITS:
            raise BadResourceRequest(
                f"{key}={_show(value)} is not an amount of memory (use MB, e.g. 1024, '1024MB', '1GiB', '1.5GB')"
            )
        number, unit = float(match.group(1)), match.group(2).lower()  # "1e400" is inf, never an error
    else:
        raise BadResourceRequest(f"{key}={_show(value)} is not an amount of memory")
    if not math.isfinite(number) or number < 0:
        raise BadResourceRequest(f"{key}={_show(value)} must be a finite amount from 0 to {MAX_MEMORY_MB} MB")
    exact = number * _MEMORY_UNITS[unit]
    # compare as a float first: math.ceil(inf) ("1e308TiB" overflows) raises OverflowError
    if not exact - 1e-9 <= MAX_MEMORY_MB:
        raise BadResourceRequest(f"{key}={_show(value)} is more than {MAX_MEMORY_MB} MB")
    return math.ceil(exact - 1e-9)


def parse_slots(value: Any, *, key: str = "slots") -> int:
    if isinstance(value, bool):
        raise BadResourceRequest(f"{key}={_show(value)} is not a whole number")
    shown = _show(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdecimal():
        # more than 4,300 digits make int() raise ValueError; anything past 3 digits is out of range
        value = int(value.strip()) if len(value.strip()) <= 3 else MAX_SLOTS + 1
    if not isinstance(value, int):
        raise BadResourceRequest(f"{key}={shown} is not a whole number of slots")
    if not 1 <= value <= MAX_SLOTS:
        raise BadResourceRequest(f"{key}={shown} is outside 1..{MAX_SLOTS}")
    return value


def parse_runtime(spec: Any) -> ResourceRequest:
    """Parse the ``runtime`` dict of an ``executor_config``."""
    if not isinstance(spec, dict):
        raise BadResourceRequest(f"executor_config['runtime']={_show(spec)} must be a dict")
    unknown = sorted(
        k if isinstance(k, str) and len(k) <= _SHOW_MAX else _show(k) for k in spec if k not in ALLOWED_KEYS
    )
    if unknown:
        listed = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise BadResourceRequest(
            f"unknown key(s) {listed} in executor_config['runtime'] (allowed: {', '.join(ALLOWED_KEYS)})"
        )
    if "memory" in spec and "memory_mb" in spec:
        raise BadResourceRequest(
            "give either 'memory' or 'memory_mb' in executor_config['runtime'], not both"
        )
    memory_key = "memory_mb" if "memory_mb" in spec else "memory"
    return ResourceRequest(
        slots=parse_slots(spec["slots"]) if "slots" in spec else 1,
        cpu=parse_cpu(spec["cpu"]) if "cpu" in spec else 0.0,
        memory_mb=parse_memory_mb(spec[memory_key], key=memory_key) if memory_key in spec else 0,
    )


def request_from_task(executor_config: Any, airflow_resources: Any = None) -> ResourceRequest:
    """The request of one task: ``executor_config["runtime"]`` wins, then Airflow ``Resources``.

    ``airflow_resources`` is an Airflow ``Resources`` object (or None); only its ``cpus`` and
    ``ram`` quantities are read, so this module never imports Airflow.

    Raises only :class:`BadResourceRequest`, whatever the input (see the module docstring).
    """
    try:
        return _request_from_task(executor_config, airflow_resources)
    except BadResourceRequest:
        raise
    except Exception as exc:  # noqa: BLE001 - a parser bug must fail the task, not the scheduler
        raise BadResourceRequest(
            f"cannot read the resource request ({type(exc).__name__}: {_show(str(exc))})"
        ) from None


def _request_from_task(executor_config: Any, airflow_resources: Any) -> ResourceRequest:
    if isinstance(executor_config, dict) and RUNTIME_KEY in executor_config:
        return parse_runtime(executor_config[RUNTIME_KEY])
    if airflow_resources is not None:
        cpus = getattr(getattr(airflow_resources, "cpus", None), "qty", None)
        ram = getattr(getattr(airflow_resources, "ram", None), "qty", None)
        return ResourceRequest(
            slots=1,
            cpu=parse_cpu(cpus, key="resources.cpus") if cpus is not None else 0.0,
            memory_mb=parse_memory_mb(ram, key="resources.ram") if ram is not None else 0,
        )
    return ResourceRequest()


def runtime_config(
    *, cpu: float | str | None = None, memory: int | float | str | None = None, slots: int | None = None
) -> dict[str, dict[str, Any]]:
    """Build (and validate now, at DAG parse time) ``executor_config`` for a task.

    >>> runtime_config(cpu=1.5, memory="1GiB", slots=2)
    {'runtime': {'cpu': 1.5, 'memory': '1GiB', 'slots': 2}}
    """
    spec: dict[str, Any] = {}
    if cpu is not None:
        spec["cpu"] = cpu
    if memory is not None:
        spec["memory"] = memory
    if slots is not None:
        spec["slots"] = slots
    parse_runtime(spec)
    return {RUNTIME_KEY: spec}
