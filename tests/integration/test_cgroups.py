"""``--isolation cgroup`` with real cgroups and real processes: limits the kernel enforces, OOM kills it
reports, CPU it caps, cgroups that never outlive their task or runner, and the refusal to start
without them. cgroup v1 runs here for real; the v2 cases skip, saying why, where v2 lacks memory+cpu."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from runner.cgroups import Isolation, TaskLimits
from runner.cgroups.backend import Backend, process_start
from runner.cgroups.limits import MB
from testing.daemons import REPO, daemon_env, query, wait_for
from testing.pgcluster import free_port
from tests.support.allocations import insert_allocations
from tests.support.fixtures import FAST, wait_runners, wait_states

DONE = {"succeeded", "failed", "lost", "cancelled"}
OOM = re.compile(r"^killed: out of memory: used (\d+) MB, limit (\d+) MB \(reserved (\d+) MB\)$")

# a process that joins a cgroup (as runner.task_entry does) and then allocates MB megabytes
HOG = (
    "import sys; from runner.cgroups import join; join(sys.argv[1]); b = bytearray(int(sys.argv[2]) * 2**20)"
)


@pytest.fixture(params=["v1", "v2"])
def backend(request) -> Backend:
    return request.getfixturevalue(f"cgroup_{request.param}")


def _isolation(backend: Backend, *, cpu_limit: bool = True) -> Isolation:
    isolation = Isolation(backend, memory_margin=10, cpu_limit=cpu_limit)
    isolation.start()
    return isolation


def _files(backend: Backend, name: str) -> dict[str, str]:
    """Every control file of cgroup ``name`` that rtx writes, as the kernel reads it back."""
    out = {}
    for d in backend.dirs(name):
        for f in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "cpu.shares", "cpu.cfs_quota_us",
                  "memory.max", "memory.swap.max", "cpu.weight", "cpu.max"):  # fmt: skip
            if (d / f).exists():
                out[f] = (d / f).read_text().strip()
    return out


def test_limits_are_the_reservation_plus_margin_and_a_cpu_weight_or_quota(backend):
    isolation = _isolation(backend)
    task = isolation.create("a1", memory_mb=50, cpu=0.5)
    unlimited = isolation.create("a2", memory_mb=0, cpu=0)
    try:
        files, none = _files(backend, task.name), _files(backend, unlimited.name)
        limit = str(55 * MB)  # 50 MB + 10 %
        if backend.version == "v1":
            assert files["memory.limit_in_bytes"] == limit
            assert files.get("memory.memsw.limit_in_bytes", limit) == limit  # no swap beyond it
            assert (files["cpu.shares"], files["cpu.cfs_quota_us"]) == ("512", "50000")
            assert int(none["memory.limit_in_bytes"]) > 2**62 and none["cpu.shares"] == "2"
            assert none["cpu.cfs_quota_us"] == "-1"
        else:
            assert files["memory.max"] == limit and files.get("memory.swap.max", "0") == "0"
            assert (files["cpu.weight"], files["cpu.max"]) == ("50", "50000 100000")
            assert (
                none["memory.max"] == "max"
                and none["cpu.weight"] == "1"
                and none["cpu.max"].startswith("max")
            )
        assert (
            TaskLimits.of(100, 2.5, memory_margin=0, cpu_limit=False).cpu_quota_us is None
        )  # default: weight only
    finally:
        isolation.release(task)
        isolation.release(unlimited)
        isolation.close()
    assert backend.children() == []


def test_the_kernel_kills_a_process_over_its_limit_and_the_reason_says_so(backend):
    isolation = _isolation(backend)
    task = isolation.create("hog", memory_mb=40, cpu=0)
    fits = isolation.create("fits", memory_mb=40, cpu=0)
    try:
        hog = subprocess.run(
            [sys.executable, "-c", HOG, json.dumps(task.join_files), "200"], cwd=REPO, timeout=30
        )
        ok = subprocess.run(
            [sys.executable, "-c", HOG, json.dumps(fits.join_files), "5"], cwd=REPO, timeout=30
        )
        assert hog.returncode == -9 and ok.returncode == 0
        # something the task left running in its cgroup (a double-forked daemon) dies with its cgroup
        leftover = subprocess.Popen(["sleep", "60"])
        for path in task.join_files:
            Path(path).write_text(str(leftover.pid))
        stats, reason = isolation.finish(task, failed=True)
        assert leftover.wait(5) == -9
        match = OOM.match(reason or "")
        assert match, reason
        used, limit, reserved = map(int, match.groups())
        assert (limit, reserved) == (44, 40) and 40 <= used <= 45, reason
        assert stats.oom_kills in (1, None)
        assert isolation.finish(fits, failed=True)[1] is None  # failed for another reason: no OOM claimed
    finally:
        isolation.close()
    assert backend.children() == []


def test_the_sampler_reads_cpu_and_memory_from_the_cgroup(backend):
    from runner.cgroups.sampler import CgroupSampler

    isolation = _isolation(backend, cpu_limit=False)
    task = isolation.create("s1", memory_mb=200, cpu=1)
    spin = (  # spin 1.5 s, then hold 60 MB idle
        "import sys, time; from runner.cgroups import join; join(sys.argv[1]); end = time.monotonic() + 1.5\n"
        "while time.monotonic() < end: pass\nb = bytearray(60 * 2**20); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", spin, json.dumps(task.join_files)], cwd=REPO)
    try:
        wait_for(
            lambda: (st := isolation.stats(task)) and st.working_set_bytes >= 60 * MB, 15, what="60 MB held"
        )
        sampler = CgroupSampler(isolation)
        first = sampler.sample({"k": task})["k"]  # since the cgroup was made: the spin included
        assert 60 <= first.rss_mb < 120 and first.peak_mb >= first.rss_mb
        time.sleep(1)
        second = sampler.sample({"k": task})["k"]  # since the first: idle
        # the spin counts (however busy the host), the idle second does not
        assert first.cpu_percent > 2 and second.cpu_percent < min(1.0, first.cpu_percent / 2), (first, second)
    finally:
        proc.kill()
        proc.wait()
        isolation.release(task)
        isolation.close()
    assert sampler.sample({"k": task}) == {}  # gone with its cgroup
    assert backend.children() == []


def test_cgroups_of_a_dead_runner_are_swept_at_start_and_a_live_neighbours_kept(cgroup_v1):
    backend = cgroup_v1
    dead_pid = 4_000_000  # a pid no process has (checked)
    while process_start(dead_pid) is not None:
        dead_pid -= 1
    stale = f"rtx-runner-{dead_pid}-12345/task-x-1"
    neighbour_proc = subprocess.Popen(["sleep", "60"])
    neighbour = f"rtx-runner-{neighbour_proc.pid}-{process_start(neighbour_proc.pid)}"
    backend.mkdir(stale.split("/")[0])
    backend.mkdir(stale)
    backend.mkdir(neighbour)
    survivor = subprocess.Popen(["sleep", "60"])  # a task of the dead runner that outlived it
    for path in backend.join_files(stale):
        Path(path).write_text(str(survivor.pid))
    try:
        isolation = _isolation(backend)
        assert survivor.wait(5) == -9
        assert sorted(backend.children()) == sorted([neighbour, isolation.runner_dir])
        isolation.close()
        assert backend.children() == [neighbour]
    finally:
        neighbour_proc.kill()
        neighbour_proc.wait()
        backend.remove(neighbour)


# -- the runner, with real task processes ---------------------------------------------------------------


def _root_children(cgroup_root: str) -> list[str]:
    from runner.cgroups.isolation import find_backend

    return find_backend(cgroup_root).children()


def _reason(db_url: str, allocation_id: str) -> str | None:
    return query(
        db_url, "SELECT reason FROM runtime_executor.allocations WHERE id = %(a)s", {"a": allocation_id}
    )[0][0]


def test_a_task_over_its_limit_is_oom_killed_while_its_neighbour_finishes(db, daemons, tmp_path, cgroup_root):
    logs = tmp_path / "airflow-logs"
    log_path = "dag_id=oom/run_id=manual__1/task_id=hog/attempt=1.log"
    (logs / log_path).parent.mkdir(parents=True)
    (logs / log_path).write_text(
        '{"timestamp":"2026-01-01T00:00:00.000000Z","level":"info","event":"start"}\n'
    )
    daemons.allocator(**FAST)
    port = free_port()
    runner = daemons.runner(
        "--isolation", "cgroup", "--cgroup-root", cgroup_root, "--memory", "1000", "--metrics-port", str(port),
        name="r1", AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(logs), **FAST,
    )  # fmt: skip
    wait_runners(daemons.db_url, 1)
    # 5x its reservation, allocated at once: far faster than any sampling could stop
    [hog] = insert_allocations(
        db, 1, workload={"allocate_mb": 250, "hold": 30, "log_path": log_path}, memory_mb=50
    )
    [neighbour] = insert_allocations(db, 1, workload={"allocate_mb": 20, "hold": 2}, memory_mb=50)
    assert wait_states(daemons.db_url, [hog, neighbour], DONE, timeout=30) == {
        hog: "failed",
        neighbour: "succeeded",
    }
    reason = _reason(daemons.db_url, hog)
    match = OOM.match(reason or "")
    assert match and match.group(2, 3) == ("55", "50"), reason
    # the same words in the task's own log, as its supervisor's JSON lines are
    record = json.loads((logs / log_path).read_text().splitlines()[-1])
    assert record["level"] == "error" and record["event"] == f"rtx: {reason}"
    assert _reason(daemons.db_url, neighbour) is None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'rtx_task_memory_exceeded_total{action="oom_killed",runner="r1"} 1.0' in metrics
    # each task's cgroup went with it; the runner's own goes when it stops
    [runner_dir] = _root_children(cgroup_root)
    assert runner_dir.startswith(f"rtx-runner-{runner.pid}-")
    assert runner.stop() == 0
    assert _root_children(cgroup_root) == []


def _usage(db_url: str, allocation_id: str) -> tuple:
    return query(
        db_url,
        "SELECT state, cpu_percent, rss_mb, peak_rss_mb FROM runtime_executor.allocations WHERE id = %(a)s",
        {"a": allocation_id},
    )[0]


def test_usage_is_the_cgroups_and_a_daemon_the_task_forgot_dies_with_it(db, daemons, tmp_path, cgroup_root):
    daemons.allocator(**FAST)
    daemons.runner(
        "--isolation", "cgroup", "--cgroup-root", cgroup_root, name="r1", RTX_USAGE_INTERVAL="0.3", **FAST
    )  # fmt: skip
    wait_runners(daemons.db_url, 1)
    # the task holds 10 MB itself; a double-forked daemon outside its process tree holds 120 MB more
    pid_file = tmp_path / "orphan.pid"
    [task] = insert_allocations(
        db,
        1,
        workload={"orphan_mb": 120, "orphan_pid": str(pid_file), "allocate_mb": 10, "hold": 3},
        memory_mb=400,
    )
    row = wait_for(lambda: (u := _usage(daemons.db_url, task))[2] is not None and u[2] >= 125 and u, 15,
                   what="the cgroup's memory (task and daemon) on the allocation")  # fmt: skip
    assert row[0] == "running" and row[3] >= row[2] and row[1] is not None
    orphan = int(pid_file.read_text())
    assert _alive(orphan)
    assert wait_states(daemons.db_url, [task], DONE, timeout=20) == {task: "succeeded"}
    wait_for(lambda: not _alive(orphan), 10, what="the forgotten daemon to die with its cgroup")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has died; only its parent has not read its exit yet


def test_a_crashed_runners_tasks_die_whole_and_its_cgroups_go_with_the_next_runner(
    db, daemons, tmp_path, cgroup_root
):
    daemons.allocator(**FAST)
    crashed = daemons.runner("--isolation", "cgroup", "--cgroup-root", cgroup_root, name="r1", **FAST)
    wait_runners(daemons.db_url, 1)
    pid_file = tmp_path / "orphan.pid"  # a daemon the task double-forked: in its cgroup, not its tree
    [task] = insert_allocations(
        db, 1, workload={"orphan_mb": 1, "orphan_pid": str(pid_file), "allocate_mb": 1, "hold": 30}
    )
    wait_for(pid_file.exists, 15, what="the task's daemon")
    orphan = int(pid_file.read_text())
    [left] = _root_children(cgroup_root)
    assert find_backend_children(cgroup_root, left)  # its task's cgroup
    crashed.kill()  # SIGKILL of the runner's process group: no drain, no clean-up; the daemon is not in it
    # the task process saw its runner go and killed everything in its cgroup, the daemon too
    wait_for(lambda: not _alive(orphan), 10, what="the task's daemon to die with its runner")
    assert _root_children(cgroup_root) == [left]
    fresh = daemons.runner("--isolation", "cgroup", "--cgroup-root", cgroup_root, name="r2", **FAST)
    wait_for(lambda: left not in _root_children(cgroup_root), 30, what="the crashed runner's cgroups swept")
    wait_for(lambda: query(daemons.db_url, "SELECT 1 FROM runtime_executor.runners WHERE name = 'r2' AND state = 'active'"),
             30, what="r2 registered")  # fmt: skip
    assert [name for name in _root_children(cgroup_root)] == [
        f"rtx-runner-{fresh.pid}-{process_start(fresh.pid)}"
    ]
    time.sleep(
        1
    )  # registered is not yet serving: a SIGTERM before its handler is set kills a runner outright
    code = fresh.stop()
    assert code == 0, fresh.log()[-5000:]
    assert _root_children(cgroup_root) == []


def find_backend_children(cgroup_root: str, name: str) -> list[str]:
    from runner.cgroups.isolation import find_backend

    return find_backend(cgroup_root).children(name)


def _cpu_seconds(dirs: list[Path]) -> float:
    for d in dirs:
        if (d / "cpuacct.usage").exists():
            return int((d / "cpuacct.usage").read_text()) / 1e9
        if (d / "cpu.stat").exists() and "usage_usec" in (d / "cpu.stat").read_text():
            return int((d / "cpu.stat").read_text().split("usage_usec ")[1].split()[0]) / 1e6
    raise AssertionError(f"no CPU accounting in {dirs}")


def _throttled(dirs: list[Path]) -> int:
    for d in dirs:
        if (d / "cpu.stat").exists():
            stat = dict(line.split() for line in (d / "cpu.stat").read_text().splitlines())
            if "nr_throttled" in stat:
                return int(stat["nr_throttled"])
    raise AssertionError(f"no cpu.stat in {dirs}")


def test_cpu_limit_holds_a_busy_task_to_its_request(db, daemons, cgroup_root):
    from runner.cgroups.isolation import find_backend

    daemons.allocator(**FAST)
    daemons.runner("--isolation", "cgroup", "--cgroup-root", cgroup_root, "--cpu-limit", name="r1", **FAST)
    wait_runners(daemons.db_url, 1)
    # two processes spinning: without the quota they would take both cores of this machine
    [busy] = insert_allocations(db, 1, workload={"busy": 4.5, "busy_procs": 2}, cpu=0.5)
    backend = find_backend(cgroup_root)

    def task_dirs():
        runners = backend.children()
        tasks = [f"{r}/{t}" for r in runners for t in backend.children(r) if t.startswith("task-")]
        return tasks and backend.dirs(tasks[0])

    dirs = wait_for(task_dirs, 15, what="the task's cgroup")
    wait_for(lambda: _cpu_seconds(dirs) > 0.2, 15, what="the task spinning")  # past its start-up
    used0, t0 = _cpu_seconds(dirs), time.monotonic()
    time.sleep(3)
    cores = (_cpu_seconds(dirs) - used0) / (time.monotonic() - t0)
    throttled = _throttled(dirs)
    print(f"busy task with cpu 0.5 and --cpu-limit used {cores:.3f} cores, throttled in {throttled} periods")
    # At most its quota, however idle the host. The floor only says it ran: this host's 2 cores are shared.
    assert 0.02 < cores <= 0.55, cores
    quota = [(d / "cpu.cfs_quota_us").read_text().strip() for d in dirs if (d / "cpu.cfs_quota_us").exists()]
    quota += [(d / "cpu.max").read_text().split()[0] for d in dirs if (d / "cpu.max").exists()]
    assert quota == ["50000"], quota
    # Given about its quota, the kernel held it back: two spinning processes exceed 0.5 in any period.
    # (On a host too busy to give it even that, it never reaches the quota and is never throttled.)
    assert throttled > 0 or cores < 0.4, (cores, throttled)
    assert wait_states(daemons.db_url, [busy], DONE, timeout=30) == {busy: "succeeded"}


def _refusal(db_url: str, tmp_path: Path, *args: str, shell: str | None = None) -> str:
    argv = [sys.executable, "-m", "runner", "serve", "--isolation", "cgroup", *args]
    if shell is not None:  # in a mount namespace of its own, changed by ``shell`` first
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'{shell} && exec "$@"',
            "sh",
            *argv,
        ]
    env = daemon_env(db_url, RTX_TASK_ENTRY="tests.support.fake_task:run", **FAST)
    result = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_runner_refuses_to_start_without_the_cgroups_it_needs(db_url, migrated, tmp_path, cgroup_root):
    if os.path.isdir("/sys/fs/cgroup/memory") is False:
        pytest.skip("the refusal cases are written for this host's cgroup v1 layout (/sys/fs/cgroup/memory)")
    missing = _refusal(db_url, tmp_path, "--cgroup-root", "/rtx-no-such-cgroup")
    assert "/sys/fs/cgroup/memory/rtx-no-such-cgroup" in missing and "does not exist" in missing, missing
    # the memory controller missing (unmounted in the runner's own mount namespace)
    no_memory = _refusal(db_url, tmp_path, "--cgroup-root", cgroup_root, shell="umount /sys/fs/cgroup/memory")
    assert "memory" in no_memory and "Delegate=yes" in no_memory, no_memory
    # not writable (a read-only view of the hierarchies)
    read_only = _refusal(
        db_url, tmp_path, "--cgroup-root", cgroup_root,
        shell="for c in memory cpu cpuacct; do mount --bind /sys/fs/cgroup/$c /sys/fs/cgroup/$c && "
        "mount -o remount,bind,ro /sys/fs/cgroup/$c; done",
    )  # fmt: skip
    assert "cannot create cgroup" in read_only and "Read-only file system" in read_only, read_only
    assert "ProtectControlGroups=no" in read_only, read_only
    assert _root_children(cgroup_root) == []


def test_an_oom_kill_the_cgroup_reports_replaces_the_guess():
    from runner.service import describe_exit

    oom = "killed: out of memory: used 55 MB, limit 55 MB (reserved 50 MB)"
    assert describe_exit(247, None, peak_rss_mb=55, memory_mb=50, oom=oom) == ("failed", oom)
    assert describe_exit(-9, "revoked by the scheduler", oom=oom) == (
        "failed",
        f"revoked by the scheduler: {oom}",
    )
    assert describe_exit(0, None, oom=None) == ("succeeded", None)
