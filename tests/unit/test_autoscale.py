"""runtime_executor.autoscale: the desired-runners figure per queue, against its formula (docs/scaling.md)."""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_executor.autoscale import (
    Demand,
    RunnerGroup,
    Shape,
    desired_runners,
    from_rows,
    queue_scale,
    runner_size,
)

SIZE = Shape(16, 4.0, 8192)


def test_one_slot_tasks_reduce_to_celerys_formula() -> None:
    # 37 queued + running one-slot tasks, 16 per runner: ceil(37 / 16) = 3
    scale = queue_scale(
        "default", [Demand("default", Shape(1, 0.0, 0), 37, 20)], [RunnerGroup("default", SIZE, 1)]
    )
    assert scale.desired == 3
    assert scale.by_dimension == {"slots": 3, "cpu": 0, "memory_mb": 0}
    assert (scale.requests, scale.waiting, scale.runners) == (37, 20, 1)


def test_the_scarcest_dimension_decides() -> None:
    demand = [
        Demand("q", Shape(1, 1.5, 512), 6),  # 9 cores: 3 runners of 4 cores
        Demand("q", Shape(1, 0.0, 3000), 5),  # 15000 + 3072 MB: 3 runners of 8192 MB
    ]
    scale = queue_scale("q", demand, [RunnerGroup("q", SIZE, 2)])
    assert scale.by_dimension["slots"] == 1
    assert scale.by_dimension["cpu"] == math.ceil(9 / 4)
    assert scale.by_dimension["memory_mb"] == math.ceil((6 * 512 + 5 * 3000) / 8192)
    assert scale.desired == 3
    assert scale.demand == Shape(11, 9.0, 18072)


def test_requests_over_half_a_runner_never_share_one() -> None:
    # three requests of 9 slots: 27 / 16 rounds up to 2, but no two fit one 16-slot runner
    scale = queue_scale("q", [Demand("q", Shape(9, 0.0, 0), 3)], [RunnerGroup("q", SIZE, 1)])
    assert scale.desired == 3


def test_too_large_requests_are_reported_apart_and_add_nothing() -> None:
    demand = [
        Demand("q", Shape(1, 0.0, 0), 4),
        Demand("q", Shape(2, 8.0, 0), 2),
        Demand("q", Shape(1, 0.0, 9000), 1),
    ]
    scale = queue_scale("q", demand, [RunnerGroup("q", SIZE, 1)])
    assert scale.desired == 1
    assert scale.too_large == 3
    assert scale.too_large_needs == Shape(2, 8.0, 9000)
    assert scale.requests == 4


def test_fractional_cores_do_not_round_up_one_runner_too_many() -> None:
    scale = queue_scale("q", [Demand("q", Shape(1, 0.1, 0), 40)], [RunnerGroup("q", Shape(64, 1.0, 0), 1)])
    assert scale.by_dimension["cpu"] == 4  # 0.1 * 40 = 4.000000000000001 in floats


def test_a_queue_without_runners_wants_one_when_it_has_work() -> None:
    scale = queue_scale("gpu", [Demand("gpu", Shape(4, 8.0, 65536), 3, 3)], [])
    assert (scale.runner_size, scale.desired, scale.too_large) == (None, 1, 0)
    assert queue_scale("gpu", [], []).desired == 0


def test_an_idle_queue_wants_none() -> None:
    assert queue_scale("q", [], [RunnerGroup("q", SIZE, 5)]).desired == 0


def test_runner_size_is_the_most_common_then_the_largest() -> None:
    small, big = Shape(8, 2.0, 4096), Shape(16, 4.0, 8192)
    assert runner_size([RunnerGroup("q", small, 3), RunnerGroup("q", big, 1)]) == small
    assert runner_size([RunnerGroup("q", small, 2), RunnerGroup("q", big, 2)]) == big
    assert runner_size([]) is None


def test_every_queue_with_demand_or_runners_appears() -> None:
    result = desired_runners(
        [Demand("a", Shape(1, 0.0, 0), 1)], [RunnerGroup("b", SIZE, 1), RunnerGroup("a", SIZE, 1)]
    )
    assert list(result) == ["a", "b"]
    assert (result["a"].desired, result["b"].desired) == (1, 0)


def test_from_rows_reads_the_query_rows() -> None:
    result = from_rows(
        [{"queue": "q", "slots": 2, "cpu": 1.0, "memory_mb": 100, "count": 10, "waiting": 4}],
        [{"queue": "q", "slots": 4, "cpu": 2.0, "memory_mb": 1000, "count": 3}],
    )
    assert result["q"].desired == 5
    assert result["q"].as_json()["runner_size"] == {"slots": 4, "cpu": 2.0, "memory_mb": 1000}


# -- property: the figure is the formula, on mixed workloads --------------------------------------

shapes = st.builds(
    Shape,
    slots=st.integers(1, 64),
    cpu=st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 8.0]),
    memory_mb=st.sampled_from([0, 128, 512, 1024, 4096, 9000]),
)
runner_shapes = st.builds(
    Shape,
    slots=st.integers(1, 64),
    cpu=st.sampled_from([0.0, 1.0, 4.0, 8.0]),
    memory_mb=st.sampled_from([0, 2048, 8192]),
)


@settings(max_examples=300, deadline=None)
@given(
    requests=st.lists(st.tuples(shapes, st.integers(1, 20)), max_size=12),
    size=runner_shapes,
)
def test_desired_is_the_formula_over_one_request_at_a_time(
    requests: list[tuple[Shape, int]], size: Shape
) -> None:
    # the reference: expand every group into single requests and apply the documented formula
    single = [shape for shape, n in requests for _ in range(n)]
    fitting = [
        s for s in single if s.slots <= size.slots and s.cpu <= size.cpu and s.memory_mb <= size.memory_mb
    ]
    bounds = []
    for d in ("slots", "cpu", "memory_mb"):
        capacity = getattr(size, d)
        if capacity > 0:
            total = sum(Fraction(getattr(s, d)) for s in fitting)  # exact: no float rounding in the reference
            halves = sum(1 for s in fitting if getattr(s, d) > Fraction(capacity) / 2)
            bounds.append(max(math.ceil(total / Fraction(capacity)), halves))
    scale = queue_scale("q", [Demand("q", s, n) for s, n in requests], [RunnerGroup("q", size, 1)])
    assert scale.desired == max(bounds, default=0)
    assert scale.too_large == len(single) - len(fitting)
    assert scale.requests == len(fitting)


@settings(max_examples=200, deadline=None)
@given(requests=st.lists(st.tuples(shapes, st.integers(1, 20)), max_size=12), size=runner_shapes)
def test_desired_runners_hold_the_fitting_demand_and_no_fewer_could(
    requests: list[tuple[Shape, int]], size: Shape
) -> None:
    scale = queue_scale("q", [Demand("q", s, n) for s, n in requests], [RunnerGroup("q", size, 1)])
    # enough capacity in every dimension for all that fits ...
    assert scale.desired * size.slots >= scale.demand.slots
    assert scale.desired * size.cpu >= scale.demand.cpu - 1e-6
    assert scale.desired * size.memory_mb >= scale.demand.memory_mb
    # ... and one runner fewer could not hold it (in some dimension, or by the requests over half a runner)
    if scale.desired:
        fewer = scale.desired - 1
        fitting = [(s, n) for s, n in requests if s.fits_in(size)]
        over_half = max(
            sum(n for s, n in fitting if getattr(s, d) > getattr(size, d) / 2)
            for d in ("slots", "cpu", "memory_mb")
            if getattr(size, d) > 0
        )
        assert (
            fewer * size.slots < scale.demand.slots
            or fewer * size.cpu < scale.demand.cpu - 1e-6
            or fewer * size.memory_mb < scale.demand.memory_mb
            or fewer < over_half
        )
