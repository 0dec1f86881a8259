"""The wheel a user installs: built by ``pip wheel . --no-deps``, installed into a fresh venv.

It must carry the product (``runtime_executor``, ``allocator``, ``runner`` with their SQL, migrations
and status page) and none of the checkout's helpers (``testing/``, ``tests/``, ``bench/``, ``demo/``,
``deploy/``). Installed on its own, it must import and answer ``--help`` on every console script.

Cost (about 25 s on 2 cores): the wheel is built from a copy of the checkout (a build in place would
leave ``build/`` and ``*.egg-info`` in it); the fresh venv has no pip of its own (this venv's pip
installs into it with ``--python``); the wheel's dependencies are not downloaded again but are seen
through a ``.pth`` line naming a folder of links to this venv's site-packages, minus the editable rtx
install. A ``.pth`` line adds that folder to ``sys.path`` after the fresh venv's own site-packages and
runs none of the ``.pth`` files in it, so the editable finder that maps ``runtime_executor`` to the
checkout never loads: the only rtx that the fresh venv can import is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("runtime_executor", "allocator", "runner")
HELPERS = ("testing", "tests", "bench", "demo", "deploy", "runtime_executor/testing")
SCRIPTS = {"rtx": "status", "rtx-allocator": "serve", "rtx-runner": "serve"}  # script: a command it lists
# what the copy of the checkout leaves out: environments, VCS, caches and earlier build output
NOT_SOURCE = shutil.ignore_patterns(
    ".venv",
    ".compat",
    ".git",
    ".demo",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
)
SMOKE = """
import json, sys
import runtime_executor, allocator, runner
import allocator.cli, runner.cli, runtime_executor.cli
from runtime_executor.db.gateway import query
from runtime_executor.db.migrate import migrations
print(json.dumps({
    "files": {m.__name__: m.__file__ for m in (runtime_executor, allocator, runner)},
    "migrations": [name for _, name, _ in migrations()],
    "query": query("claim_unassigned", "rtx_smoke"),
    "airflow_loaded": "airflow" in sys.modules,
}))
"""


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH (it could name the checkout) and none of the caller's rtx or Airflow settings."""
    return {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("RTX_", "AIRFLOW"))
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE, symlinks=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(work / "dist")],
        cwd=source,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    if result.returncode != 0 and "No matching distribution found for setuptools" in result.stderr:
        pytest.skip(f"pip cannot get the build backend (setuptools) here: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (work / "dist").glob("rtx_runtime_executor-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A venv with nothing but the wheel installed into it (its dependencies seen through a .pth)."""
    work = tmp_path_factory.mktemp("venv")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    deps = work / "deps"
    deps.mkdir()
    ours = {*PRODUCT, *(h for h in HELPERS if "/" not in h)}
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        name = entry.name
        if name.startswith(("__editable__", "rtx_runtime_executor")) or name.endswith(".pth") or name in ours:
            continue
        (deps / name).symlink_to(entry)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "rtx_test_dependencies.pth").write_text(f"{deps}\n")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "-q", str(wheel)],
        cwd=work,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return venv


def test_wheel_ships_the_product_and_no_test_helper(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == set(PRODUCT), sorted(tops)
    leaked = [n for n in names if any(n == h or n.startswith(h + "/") for h in HELPERS)]
    assert leaked == [], leaked
    # the package data the product reads at run time
    for folder in ("db/queries", "db/migrations"):
        shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith(f"runtime_executor/{folder}/")}
        in_checkout = {p.name for p in (REPO / "runtime_executor" / folder).glob("*.sql")}
        assert shipped == in_checkout, (folder, sorted(in_checkout ^ shipped))
    assert "runtime_executor/plugin/page.html" in names


def test_wheel_installed_alone_imports_and_every_script_answers_help(fresh_venv, tmp_path):
    python = fresh_venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # run from an empty folder: neither the working directory nor PYTHONPATH names the checkout
    smoke = subprocess.run(
        [str(python), "-c", SMOKE],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    found = json.loads(smoke.stdout.strip().splitlines()[-1])
    for module, path in found["files"].items():
        assert Path(path).is_relative_to(site), f"{module} imported from {path}, not from the wheel in {site}"
    assert found["migrations"] == sorted(
        p.name for p in (REPO / "runtime_executor/db/migrations").glob("*.sql")
    )
    assert '"rtx_smoke".' in found["query"]
    assert found["airflow_loaded"] is False  # the shared code and the daemons import without Airflow

    helpers = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print([m for m in ('testing', 'tests', 'bench', 'demo')"
         " if u.find_spec(m) is not None])"],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert helpers.returncode == 0 and helpers.stdout.strip() == "[]", helpers.stdout + helpers.stderr

    for script, command in SCRIPTS.items():
        exe = fresh_venv / "bin" / script
        assert exe.exists(), f"the wheel installed no {script} script"
        assert exe.read_text().splitlines()[0] == f"#!{python}", (
            f"{script} does not run the fresh venv's python"
        )
        result = subprocess.run(
            [str(exe), "--help"], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{script} --help: {result.stdout}{result.stderr}"
        assert result.stdout.startswith(f"Usage: {script} "), result.stdout
        assert f"\n  {command} " in result.stdout, result.stdout
