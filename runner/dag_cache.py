"""A DAG file parsed once per task process, not once per task (``--dag-cache``, on by default).

Airflow's task runner parses the task's DAG file in every task process before the task runs
(``task_runner.parse``: a ``BundleDagBag`` of that one file, running the file's top-level code).
For a wide DAG that is most of a no-op task's CPU: the 256-task DAG of ``bench.airflow`` takes
62-130 ms to parse on the development machine, its 20-task chain 16-19 ms, where the whole no-op
task costs 60-120 ms. A spare (``runner.spares``) is Airflow's task supervisor for many tasks in
turn, each run in a child it forks. So the spare parses a DAG file itself, just before it forks the
first task of that file (``prepare``), and every task of that file it forks then finds the parsed
DAG already in its memory: a copy-on-write copy, its own to change (templates render into it). The
spare never runs task code, so its copy stays as parsed.

An entry, and when it is used (each case: what happens)::

    no entry --prepare: parse in the spare--> ok     --a task of that file--> used by the task
                                          \\-> failed --a task of that file--> the task parses itself
    ok / failed --a file it read changed, or older than MAX_AGE_S--> dropped, parsed anew

* Key: bundle name, bundle version, the DAG file's path in the bundle; used only when the task's
  parse asks for exactly the ``BundleDagBag`` the spare made (same arguments), else Airflow's own.
* Fresh: every file and folder the parse read (an audit hook records ``open``, ``os.listdir``,
  ``os.scandir`` while it runs: the DAG file, the modules it imported from outside the installed
  packages, a YAML its tasks are generated from) has the same inode, size and mtime as when it was
  read, a file then missing is still missing, and the entry is younger than ``MAX_AGE_S``. Checked
  before the spare forks the task and again in the task, after its bundle was initialized. A stale
  entry drops every entry and every module of DAG code (what the spare's parses added to
  ``sys.modules`` from outside the installed packages) from ``sys.modules``, so the new parse imports the files as they
  are now (a helper one DAG file imported first may be another's too). Installed packages are never
  forgotten: a second copy of a module would make a second copy of its classes.
* Failed: the parse raised, or had import errors, or the file is not in the bundle yet (a versioned
  bundle the task has yet to check out: the spare never initializes a bundle), or its top-level code
  asked for a Variable, a Connection or the supervisor's comms (``NeedsTaskContext``: what the spare
  would get is not what the task's own parse gets through the Execution API, so not even a default
  it falls back to is kept). The task then parses the file itself, as without the cache, so every
  error lands in its own log; the failure is kept (not retried) while its files are unchanged.
* Bounded: ``MAX_ENTRIES`` files per spare, least recently used dropped; the spare itself retires
  after ``tasks_per_process`` tasks or when its memory grew past 256 MB (``runner.spares``).
* Not for a spare's last task (``--tasks-per-process 1``, ``--isolation cgroup``): no later task
  would use it, and parsing in the spare would only move the parse before the task's start.

What differs from a parse per task: top-level code runs once per spare and DAG file (at most every
``MAX_AGE_S``), in the supervisor process, so what it reads other than files (the time, an
environment variable, a network call, which Airflow's own guidance already keeps out of top-level
code) is as it was at that parse. ``--no-dag-cache`` (``RTX_DAG_CACHE=0``) parses per task.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_ENTRIES = 8  # DAG files one spare keeps parsed
MAX_AGE_S = 60.0  # an entry older than this is parsed anew (bounds what top-level code read other than files)
_AUDITED = frozenset({"open", "os.listdir", "os.scandir"})

Stamp = tuple[int, int, int] | None  # inode, size, mtime_ns; None: missing


def stamp(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _installed_roots() -> tuple[str, ...]:
    """Where installed packages and the standard library live: changes there are upgrades, which
    need a runner restart in any case, so their files are not watched."""
    paths = sysconfig.get_paths()
    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):  # both forms: module paths are compared as abspath, a venv may be a symlink
            roots.update({os.path.abspath(paths[key]), os.path.realpath(paths[key])})
    return tuple(sorted(root.rstrip(os.sep) + os.sep for root in roots))


@dataclass
class Entry:
    kwargs: dict[str, Any]  # what the spare built its BundleDagBag with
    bag: Any | None  # None: the parse failed, the task parses itself
    files: dict[str, Stamp]
    parsed_at: float = field(default_factory=time.monotonic)
    reason: str = ""  # why it failed

    def fresh(self) -> bool:
        if time.monotonic() - self.parsed_at > MAX_AGE_S:
            return False
        return all(stamp(path) == was for path, was in self.files.items())


def _reads(args: tuple) -> bool:
    """Whether an ``open`` audit event (path, mode, flags) opens for reading only: ``open()`` passes
    its mode string, ``os.open`` None and its flags."""
    mode = args[1] if len(args) > 1 else None
    if isinstance(mode, str):
        return not any(c in mode for c in "wax+")
    flags = args[2] if len(args) > 2 else 0
    return not isinstance(flags, int) or flags & os.O_ACCMODE == os.O_RDONLY


class _Reads:
    """The files and folders read while a parse runs, from the interpreter's audit events. The hook
    stays for the life of the process (audit hooks cannot be removed) and costs one check per
    event while nothing is recorded."""

    def __init__(self, skip: tuple[str, ...]) -> None:
        self.active: set[str] | None = None
        self.skip = skip
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.active is None or event not in _AUDITED or not args:
            return
        path = args[0]
        if isinstance(path, int) or path is None:
            return  # a file descriptor: already opened by its path
        if event == "open" and not _reads(args):
            return  # a file the DAG writes (a log, a marker) is its output, not what it was made from
        with contextlib.suppress(TypeError, ValueError):
            path = os.path.abspath(os.fsdecode(path))
            if not path.startswith(self.skip) and f"{os.sep}__pycache__{os.sep}" not in path:
                self.active.add(path)  # (bytecode is rewritten by any process: its source is watched)

    @contextlib.contextmanager
    def record(self):
        found: set[str] = set()
        self.active = found
        try:
            yield found
        finally:
            self.active = None


class DagCache:
    def __init__(
        self, dagbag_module: Any, arguments: tuple[str, ...], bundles_manager: type, enabled: bool = True
    ) -> None:
        self.dagbag_module = dagbag_module
        self.arguments = arguments  # the keyword arguments Airflow's parse passes (parse_shape)
        self.bundle_dag_bag = dagbag_module.BundleDagBag
        self.bundles_manager = bundles_manager
        self.enabled = enabled
        self.entries: OrderedDict[tuple[str, str | None, str], Entry] = OrderedDict()
        self.installed = _installed_roots()
        self.reads = _Reads(self.installed)
        self.loaded: set[str] = set()  # every module of DAG code a parse here added to sys.modules
        self.generation = 0  # changes whenever a prepare parsed (what a process forked before lacks)

    def dag_modules(self, names: Any) -> list[str]:
        """Of these modules (new in ``sys.modules`` since a parse began), those of files outside the
        installed packages (DAG files, their helpers): what a new parse must import afresh once a
        file changed. Modules rtx, Airflow or a provider imported are never among them."""
        found = []
        for name in list(names):
            module = sys.modules.get(name)
            if module is None:
                continue
            paths = [getattr(module, "__file__", None), *list(getattr(module, "__path__", None) or ())]
            paths = [os.path.abspath(p) for p in paths if isinstance(p, str)]
            if paths and not any(p.startswith(self.installed) for p in paths):
                found.append(name)
        return found

    def forget(self, names: list[str]) -> None:
        for name in names:
            sys.modules.pop(name, None)

    def clear(self) -> None:
        """Every entry dropped and every DAG module forgotten: a file changed, and the modules one
        DAG file imported may be shared with another file's entry (which then saw no read of them)."""
        self.entries.clear()
        self.forget(sorted(self.loaded))
        self.loaded.clear()

    @staticmethod
    def key(bundle_info: Any, dag_rel_path: Any) -> tuple[str, str | None, str]:
        return (bundle_info.name, bundle_info.version, os.fspath(dag_rel_path))

    # -- in the spare, before its supervisor forks the task ---------------------------------------
    def prepare(self, bundle_info: Any, dag_rel_path: Any) -> Entry | None:
        """Have a fresh entry for this DAG file (parsing it here if need be). Never raises: at worst
        the task parses its file itself."""
        if not self.enabled:
            return None
        key = self.key(bundle_info, dag_rel_path)
        entry = self.entries.get(key)
        if entry is not None:
            if entry.fresh():
                self.entries.move_to_end(key)
                return entry
            self.clear()
        self.generation += 1
        try:
            entry = self._parse(bundle_info, dag_rel_path)
        except Exception as exc:  # noqa: BLE001 - e.g. an unknown bundle: the task's own parse says so
            entry = Entry(kwargs={}, bag=None, files={}, reason=f"{type(exc).__name__}: {exc}")
        self.entries[key] = entry
        while len(self.entries) > MAX_ENTRIES:
            self.entries.popitem(last=False)  # its modules stay: other entries may use them
        return entry

    def _parse(self, bundle_info: Any, dag_rel_path: Any) -> Entry:
        # The bundle as the task will find it, never initialized here (a git bundle would fetch):
        # a file not there yet fails the entry, and the task's own parse checks it out.
        bundle = self.bundles_manager().get_bundle(name=bundle_info.name, version=bundle_info.version)
        bundle_path = bundle.path
        dag_folder = os.fspath(Path(bundle_path, dag_rel_path))
        before = stamp(dag_folder)
        if before is None:
            return Entry(kwargs={}, bag=None, files={dag_folder: None}, reason="not in the bundle yet")
        values = {
            "dag_folder": dag_folder,
            "safe_mode": False,
            "load_op_links": False,
            "bundle_path": bundle_path,
            "bundle_name": bundle_info.name,
        }
        kwargs = {name: values[name] for name in self.arguments}
        modules_before = set(sys.modules)
        bag, reason = None, ""
        with self.reads.record() as read, _without_task_context() as asked:
            try:
                bag = self.bundle_dag_bag(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - top-level code may even sys.exit(); the task parses
                reason = f"{type(exc).__name__}: {exc}"
            modules = self.dag_modules(name for name in sys.modules if name not in modules_before)
        # What it read, and the files of every DAG module loaded here: one that another DAG file
        # imported first was not read now, yet this DAG uses it too.
        self.loaded.update(modules)
        for name in self.loaded:
            path = getattr(sys.modules.get(name), "__file__", None)
            if isinstance(path, str):
                read.add(os.path.abspath(path))
        files = {path: stamp(path) for path in read}
        files[dag_folder] = before  # a change during the parse makes the entry stale at once
        entry = Entry(kwargs=kwargs, bag=bag, files=files, reason=reason)
        if asked:  # even if the file caught NeedsTaskContext: what it got is not what the task would
            entry.reason = f"its top-level code asked for {asked[0]}"
        elif bag is not None and getattr(bag, "import_errors", None):
            entry.reason = "import errors"
        elif bag is not None and not getattr(bag, "dags", None):
            entry.reason = "no DAG in the file"
        if entry.reason:
            entry.bag = None
            self.forget(modules)  # the task's own parse imports them afresh
            self.loaded.difference_update(modules)
        return entry

    # -- in the task process, inside Airflow's parse ----------------------------------------------
    def lookup(self, bundle_info: Any, dag_rel_path: Any) -> Entry | None:
        """The spare's entry for this file, if any (``bag`` None: the task parses it, ``reason`` says why)."""
        return self.entries.get(self.key(bundle_info, dag_rel_path)) if self.enabled else None

    def bag_for(self, entry: Entry, kwargs: dict[str, Any]) -> Any:
        """What ``BundleDagBag(**kwargs)`` gives the task: the parsed bag when these are the
        arguments it was made with and its files are unchanged since, else a parse of its own (after
        the stale modules left ``sys.modules``)."""
        if kwargs == entry.kwargs and entry.fresh():
            return entry.bag
        self.clear()
        return self.bundle_dag_bag(**kwargs)

    @contextlib.contextmanager
    def serving(self, entry: Entry):
        """While Airflow's parse runs in the task: its ``BundleDagBag(...)`` comes from ``entry``.
        Yields a list that holds the entry's age once the parsed bag was served."""
        module = self.dagbag_module
        real = module.BundleDagBag

        served: list[float] = []  # how long ago the served bag was parsed, once served

        def bundle_dag_bag(**kwargs: Any) -> Any:
            bag = self.bag_for(entry, kwargs)
            if bag is entry.bag:
                served.append(time.monotonic() - entry.parsed_at)
            return bag

        module.BundleDagBag = bundle_dag_bag
        try:
            yield served
        finally:
            module.BundleDagBag = real


class NeedsTaskContext(BaseException):  # noqa: N818 - not an error of the task's: a parse that must be its own
    """Top-level code asked for what only a task has (a Variable, a Connection, its supervisor's comms).
    A BaseException, so a DAG file's ``except Exception`` (falling back to a default) cannot hide it."""


class _NoComms:
    """What the task runner's ``SUPERVISOR_COMMS`` is while the spare parses: any use is noted and refused."""

    def __init__(self, asked: list[str]) -> None:
        self._asked = asked

    def __getattr__(self, name: str) -> Any:
        self._asked.append(f"the task's supervisor comms ({name})")
        raise NeedsTaskContext(self._asked[-1])


@contextlib.contextmanager
def _without_task_context():
    """While the spare parses: a Variable or Connection lookup (both go through the supervisor
    module's ``ensure_secrets_backend_loaded`` in Airflow 3.1-3.3) and any use of the task runner's
    ``SUPERVISOR_COMMS`` raise ``NeedsTaskContext`` and are noted in the yielded list. In the spare
    they would read only environment variables and external backends (the supervisor's fallback
    chain), not what the task's own parse reads through the API, so such a file is parsed per task."""
    from airflow.sdk.execution_time import supervisor, task_runner

    asked: list[str] = []

    def refuse() -> Any:
        asked.append("a Variable or Connection")
        raise NeedsTaskContext(asked[-1])

    secrets, had_comms = supervisor.ensure_secrets_backend_loaded, hasattr(task_runner, "SUPERVISOR_COMMS")
    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    supervisor.ensure_secrets_backend_loaded = refuse
    task_runner.SUPERVISOR_COMMS = _NoComms(asked)
    try:
        yield asked
    finally:
        supervisor.ensure_secrets_backend_loaded = secrets
        if had_comms:
            task_runner.SUPERVISOR_COMMS = comms
        else:
            del task_runner.SUPERVISOR_COMMS


# What Airflow's parse passes its BundleDagBag (3.1: no bundle_name), and the value the spare gives each.
KNOWN_ARGUMENTS = ("dag_folder", "safe_mode", "load_op_links", "bundle_path", "bundle_name")


def parse_shape(parse: Any) -> tuple[str, tuple[str, ...]] | None:
    """How Airflow's ``parse`` makes its BundleDagBag, read from its code (under 3.3's tracing
    decorator): the module it imports the class from (``from <module> import BundleDagBag`` inside
    the function: ``airflow.models.dagbag`` in 3.1, ``airflow.dag_processing.dagbag`` in 3.2 and
    3.3) and the keyword arguments it passes. The spare makes its bag with exactly those, and the
    cache patches the name parse really uses; None (no cache) for a parse of another shape."""
    import inspect

    with contextlib.suppress(ValueError):
        parse = inspect.unwrap(parse)
    code = getattr(parse, "__code__", None)
    if code is None or "BundleDagBag" not in code.co_names:
        return None
    modules = [name for name in code.co_names if name.endswith(".dagbag")]
    calls = [c for c in code.co_consts if isinstance(c, tuple) and "dag_folder" in c]
    if len(modules) != 1 or len(calls) != 1 or not set(calls[0]) <= set(KNOWN_ARGUMENTS):
        return None
    return modules[0], calls[0]
