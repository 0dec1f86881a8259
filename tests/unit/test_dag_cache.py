"""runner.dag_cache with the installed Airflow's own BundleDagBag and real DAG files: what a spare keeps
parsed, and when it parses again. (End to end, with a runner and Airflow: tests/e2e/test_dag_cache.py.)"""

from __future__ import annotations

import importlib
import re
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

pytest.importorskip("airflow.sdk.execution_time.task_runner")

from airflow.dag_processing.bundles.local import LocalDagBundle  # noqa: E402
from airflow.sdk.execution_time import task_runner  # noqa: E402

from runner import dag_cache  # noqa: E402


class Bundles:
    """DagBundlesManager's one call the cache makes, for a LocalDagBundle in a temporary folder."""

    path: Path

    def get_bundle(self, name: str, version: str | None = None) -> LocalDagBundle:
        return LocalDagBundle(name=name, path=str(self.path))


class BundleInfo:
    def __init__(self, name: str = "tests", version: str | None = None) -> None:
        self.name, self.version = name, version


@pytest.fixture(scope="module")
def cache() -> dag_cache.DagCache:
    shape = dag_cache.parse_shape(task_runner.parse)
    assert shape is not None, "the installed Airflow's parse has a shape the cache does not know"
    return dag_cache.DagCache(importlib.import_module(shape[0]), shape[1], Bundles)


@pytest.fixture(autouse=True)
def _empty(cache):
    cache.clear()  # entries are keyed by bundle name and path in it, the same in every test
    yield
    cache.clear()


@pytest.fixture
def dags(tmp_path, cache) -> Path:
    Bundles.path = tmp_path
    helper = f"helper_{uuid.uuid4().hex[:8]}"  # a module name of its own per test: sys.modules is shared
    (tmp_path / "helper_name").write_text(helper)
    (tmp_path / f"{helper}.py").write_text('VALUE = "one"\n')
    (tmp_path / "settings.json").write_text('{"n": 2}\n')
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.json").write_text("{}")
    write_dag(
        tmp_path,
        f"""
        import json, os
        from pathlib import Path
        from {helper} import VALUE
        HERE = Path(__file__).parent
        with open(HERE / "parses.log", "a") as f:  # written, not read: never watched
            f.write("parse\\n")
        N = json.loads((HERE / "settings.json").read_text())["n"]
        CONFIGS = sorted(os.listdir(HERE / "configs"))
        """,
        "VALUE",
    )
    return tmp_path


def write_dag(folder: Path, top: str, value: str, name: str = "dc_dag.py") -> None:
    (folder / name).write_text(
        textwrap.dedent(top)
        + textwrap.dedent(
            f"""
            from airflow.sdk import DAG, task

            @task
            def t(v):
                return v

            with DAG("{name[:-3]}", schedule=None):
                for i in range(globals().get("N", 1) + len(globals().get("CONFIGS", []))):
                    t.override(task_id=f"t{{i}}")({value})
            """
        )
    )


def parses(folder: Path) -> int:
    return len((folder / "parses.log").read_text().split())


def task_ids(entry: dag_cache.Entry, dag_id: str = "dc_dag") -> list[str]:
    return sorted(entry.bag.dags[dag_id].task_dict)


def op_args(entry: dag_cache.Entry) -> tuple:
    return tuple(entry.bag.dags["dc_dag"].task_dict["t0"].op_args)


def test_the_installed_airflow_parse_has_a_known_shape():
    shape = dag_cache.parse_shape(task_runner.parse)
    assert shape is not None
    module, arguments = shape
    assert hasattr(importlib.import_module(module), "BundleDagBag")
    assert {"dag_folder", "bundle_path"} <= set(arguments)


def test_a_file_is_parsed_once_while_nothing_it_read_changes(cache, dags):
    first = cache.prepare(BundleInfo(), "dc_dag.py")
    assert first.bag is not None, first.reason
    assert task_ids(first) == ["t0", "t1", "t2"] and op_args(first) == ("one",)
    assert cache.prepare(BundleInfo(), "dc_dag.py") is first
    assert parses(dags) == 1  # the file's own write is output, so it did not make the entry stale
    assert {dags / "dc_dag.py", dags / "settings.json", dags / "configs"} <= {Path(p) for p in first.files}


def _edit_helper(d: Path) -> None:
    (d / f"{(d / 'helper_name').read_text()}.py").write_text('VALUE = "two"\n')


@pytest.mark.parametrize(
    "change, tasks, value",
    [
        pytest.param(_edit_helper, 3, "two", id="helper"),
        pytest.param(lambda d: (d / "settings.json").write_text('{"n": 3}\n'), 4, "one", id="data-file"),
        pytest.param(lambda d: (d / "configs" / "b.json").write_text("{}"), 4, "one", id="listed-folder"),
        pytest.param(
            lambda d: (d / "dc_dag.py").write_text(
                (d / "dc_dag.py").read_text().replace("range(", "range(1 + ")
            ),
            4,
            "one",
            id="dag-file",
        ),
    ],
)
def test_a_change_to_what_the_parse_read_parses_again(cache, dags, change, tasks, value):
    first = cache.prepare(BundleInfo(), "dc_dag.py")
    assert len(task_ids(first)) == 3
    change(dags)
    assert not first.fresh()
    second = cache.prepare(BundleInfo(), "dc_dag.py")
    assert second is not first and second.bag is not None, second.reason
    assert parses(dags) == 2
    assert (len(task_ids(second)), op_args(second)) == (tasks, (value,))


def test_a_changed_helper_is_imported_afresh_and_installed_modules_stay(cache, dags):
    helper = (dags / "helper_name").read_text()
    sys.modules.pop("colorsys", None)
    (dags / "dc_dag.py").write_text("import colorsys\n" + (dags / "dc_dag.py").read_text())
    first = cache.prepare(BundleInfo(), "dc_dag.py")
    old_helper, old_colorsys = sys.modules[helper], sys.modules["colorsys"]
    (dags / f"{helper}.py").write_text('VALUE = "two"\n')
    second = cache.prepare(BundleInfo(), "dc_dag.py")
    assert op_args(first) == ("one",) and op_args(second) == ("two",)
    assert sys.modules[helper] is not old_helper  # the DAG's module, imported again
    assert sys.modules["colorsys"] is old_colorsys  # the standard library's: never a second copy


def test_an_entry_older_than_max_age_is_parsed_again(cache, dags):
    first = cache.prepare(BundleInfo(), "dc_dag.py")
    first.parsed_at -= dag_cache.MAX_AGE_S + 1
    assert cache.prepare(BundleInfo(), "dc_dag.py") is not first
    assert parses(dags) == 2


@pytest.mark.parametrize(
    "top, reason",
    [
        pytest.param(
            'from airflow.sdk import Variable\nVALUE = Variable.get("rtx_unit_var", default="fallback")\n',
            "a Variable or Connection",
            id="variable-with-default",
        ),
        pytest.param(
            "from airflow.sdk import Variable\ntry:\n    VALUE = Variable.get('v')\nexcept Exception:\n    VALUE = 'x'\n",
            "a Variable or Connection",
            id="variable-exception-caught",
        ),
        pytest.param(
            "from airflow.sdk import BaseHook\nVALUE = BaseHook.get_connection('c').host\n",
            "a Variable or Connection",
            id="connection",
        ),
        pytest.param("raise RuntimeError('top-level failure')\nVALUE = 1\n", "import errors", id="raises"),
        pytest.param("import sys\nsys.exit(3)\nVALUE = 1\n", "import errors|SystemExit", id="exits"),
    ],
)
def test_top_level_code_that_needs_the_task_or_fails_is_left_to_the_task(cache, tmp_path, top, reason):
    Bundles.path = tmp_path
    write_dag(tmp_path, top, "VALUE", name="dc_bad.py")
    entry = cache.prepare(BundleInfo(), "dc_bad.py")
    assert entry.bag is None
    assert re.search(reason, entry.reason), entry.reason
    assert not any(name.startswith("unusual_prefix") and "dc_bad" in name for name in sys.modules)
    assert cache.prepare(BundleInfo(), "dc_bad.py") is entry  # not retried while its files are unchanged
    assert not hasattr(task_runner, "SUPERVISOR_COMMS") or task_runner.SUPERVISOR_COMMS is not None


def test_a_file_not_in_the_bundle_yet_is_left_to_the_task(cache, tmp_path):
    Bundles.path = tmp_path
    entry = cache.prepare(BundleInfo(), "missing.py")
    assert entry.bag is None and "not in the bundle" in entry.reason
    write_dag(tmp_path, "VALUE = 1\n", "VALUE", name="missing.py")  # checked out by the task's own parse
    again = cache.prepare(BundleInfo(), "missing.py")
    assert again is not entry and again.bag is not None, again.reason


def test_the_task_is_served_the_parsed_bag_only_for_the_same_arguments(cache, dags):
    entry = cache.prepare(BundleInfo(), "dc_dag.py")
    module = cache.dagbag_module
    real = module.BundleDagBag
    with cache.serving(entry) as served:
        assert module.BundleDagBag(**entry.kwargs) is entry.bag
        assert len(served) == 1
        other = dict(entry.kwargs, safe_mode=True)
        fresh = module.BundleDagBag(**other)
        assert fresh is not entry.bag and isinstance(fresh, real)
    assert module.BundleDagBag is real


def test_a_stale_entry_is_not_served(cache, dags):
    entry = cache.prepare(BundleInfo(), "dc_dag.py")
    (dags / "settings.json").write_text('{"n": 5}\n')  # changed after the spare's check, before the task's
    with cache.serving(entry) as served:
        bag = cache.dagbag_module.BundleDagBag(**entry.kwargs)
    assert bag is not entry.bag and not served
    assert sorted(bag.dags["dc_dag"].task_dict) == [f"t{i}" for i in range(6)]


def test_off_keeps_nothing(dags):
    shape = dag_cache.parse_shape(task_runner.parse)
    off = dag_cache.DagCache(importlib.import_module(shape[0]), shape[1], Bundles, enabled=False)
    assert off.prepare(BundleInfo(), "dc_dag.py") is None
    assert off.lookup(BundleInfo(), "dc_dag.py") is None
    assert not (dags / "parses.log").exists()


def test_entries_are_bounded(cache, tmp_path):
    Bundles.path = tmp_path
    for i in range(dag_cache.MAX_ENTRIES + 3):
        write_dag(tmp_path, "VALUE = 1\n", "VALUE", name=f"dc_many_{i}.py")
        assert cache.prepare(BundleInfo(), f"dc_many_{i}.py").bag is not None
    assert len(cache.entries) == dag_cache.MAX_ENTRIES
    assert cache.lookup(BundleInfo(), "dc_many_0.py") is None
