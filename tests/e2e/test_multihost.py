"""Runner hosts of their own, with real Airflow 3.3: logs across hosts, a partition, a flapping link,
a clock far off.

Each runner runs in a network namespace (``testing/netns.py``) and reaches Postgres and the
api-server only through its veth link (proxies on the host side of the link); the api-server fetches
the task logs from the runner's log server at the address the task recorded as ``ti.hostname``
(``[core] hostname_callable = runtime_executor.hostname.route_address``). The scheduler, the
dag-processor, the api-server and the allocator run on this host. Timing claims are judged from the
tasks' own trace (``multihost_dags/rtx_multihost.py``) and the database clock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from testing import netns
from testing.airflow_stack import AirflowStack, sqlalchemy_url
from testing.pgcluster import create_database, drop_database, free_port
from tests.conftest import _with_db
from tests.support.daemons import REPO, Daemon, query, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(netns.available() is not None, reason=f"multi-host harness: {netns.available()}"),
]

DAGS = Path(__file__).parent / "multihost_dags"
FAKETIME_SITE = REPO / "testing" / "faketime_site"  # its sitecustomize: see there
EXAMPLE_DAG = next(
    (
        p
        for p in (
            REPO / "demo" / "dags" / "rtx_example.py",
            REPO / "deploy" / "demo" / "dags" / "rtx_example.py",
        )
        if p.exists()
    ),
    None,
)
# short leases keep the test quick; fencing needs lease > heartbeat + kill grace + 1 s
LEASE = ("--heartbeat-interval", "1", "--lease-timeout", "8", "--kill-grace", "2")
PG_KEEPALIVE = (5, 2, 3)  # what rtx asks of Postgres (tcp_keepalives_*), so the proxy drops dead clients


class MultiHost:
    def __init__(self, airflow: AirflowStack, network: netns.Network, root: Path, log_port: int) -> None:
        self.airflow = airflow
        self.network = network
        self.root = root
        self.log_port = log_port
        self.daemons: list[Daemon] = []

    @property
    def url(self) -> str:
        return self.airflow.database_url

    def runner(self, host: netns.Host, *args: str, serve_logs: bool = True, **env: str) -> Daemon:
        """``rtx-runner serve`` on ``host``: its database and Execution API only through the link."""
        pg = host.forward("127.0.0.1", urlsplit(self.url).port or 5432, keepalive=PG_KEEPALIVE)
        api = host.forward("127.0.0.1", self.airflow.port)
        link_db = (
            urlsplit(self.url)
            ._replace(netloc=f"{urlsplit(self.url).username}@{host.gateway}:{pg.port}")
            .geturl()
        )
        full_env = self.airflow.env()
        full_env.update(
            RTX_DATABASE_URL=link_db,
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlalchemy_url(link_db),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC=sqlalchemy_url(link_db),
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://{host.gateway}:{api.port}/execution/",
            AIRFLOW__CORE__HOSTNAME_CALLABLE="runtime_executor.hostname.route_address",
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(self.root / host.name / "logs"),
            RTX_LOG_FORMAT="json",
        )
        full_env.update(env)
        argv = [sys.executable, "-m", "runner", "serve", "--name", host.name, *LEASE, *args]
        if serve_logs:
            argv.append("--serve-logs")
        d = Daemon(host.name, host.command(argv), full_env, self.root)
        self.daemons.append(d)
        return d

    def runner_id(self, name: str, timeout: float = 60) -> str:
        rows = wait_for(
            lambda: query(
                self.url,
                "SELECT id::text FROM runtime_executor.runners WHERE name = %(n)s AND state = 'active'"
                " ORDER BY started_at DESC",
                {"n": name},
            ),
            timeout=timeout,
            interval=0.2,
            what=f"runner {name} to register",
        )
        return rows[0][0]

    def trigger(self, dag_id: str, trace: Path | None = None) -> str:
        return self.airflow.trigger(dag_id, conf={"trace": str(trace)} if trace else None)

    def wait(self, dag_id: str, run_id: str, timeout: float = 150) -> str:
        """The run's final state, read from Airflow's own table: on a loaded machine the api-server can
        take longer than a request timeout to answer, which is not what these tests are about."""

        def final() -> str | None:
            rows = query(
                self.url,
                "SELECT state FROM dag_run WHERE dag_id = %(d)s AND run_id = %(r)s",
                {"d": dag_id, "r": run_id},
            )
            return rows[0][0] if rows and rows[0][0] in ("success", "failed") else None

        try:
            state = wait_for(final, timeout=timeout, interval=0.5, what=f"run {dag_id}/{run_id} to finish")
        except BaseException:
            print(self.logs())
            raise
        if state != "success":
            print(
                query(
                    self.url,
                    "SELECT task_id, map_index, try_number, state, reason FROM runtime_executor.allocations"
                    " WHERE dag_id = %(d)s AND run_id = %(r)s",
                    {"d": dag_id, "r": run_id},
                )
            )
            print(self.logs())
        return state

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        """The REST API, asked again when a loaded machine makes it time out."""
        for attempt in range(3):
            try:
                return self.airflow.api(method, path, **kwargs)
            except httpx.TimeoutException:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def logs(self) -> str:
        parts = [f"===== {d.name} =====\n{d.log()[-5000:]}" for d in self.daemons]
        parts += [
            f"===== {c} =====\n{self.airflow.component_log(c)[-4000:]}" for c in ("scheduler", "api-server")
        ]
        return "\n".join(parts)

    def stop_runners(self) -> None:
        runners = [d for d in self.daemons if d.name != "allocator" and d.proc.poll() is None]
        for d in runners:
            d.send(signal.SIGTERM)
        for d in runners:
            d.stop(timeout=15)


@pytest.fixture(scope="module")
def multihost(pg_admin_url, tmp_path_factory) -> Iterator[MultiHost]:
    name = f"rtx_e2e_{uuid.uuid4().hex[:10]}"
    create_database(pg_admin_url, name)
    home = tmp_path_factory.mktemp("airflow")
    dags = home / "dags"
    dags.mkdir()
    shutil.copy(DAGS / "rtx_multihost.py", dags)
    if EXAMPLE_DAG is not None:
        shutil.copy(EXAMPLE_DAG, dags)
    log_port = free_port()
    airflow = AirflowStack(
        home,
        _with_db(pg_admin_url, name),
        port=free_port(),
        dags_folder=dags,
        extra_env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port)},
    )
    network = netns.Network()
    stack = MultiHost(airflow, network, home, log_port)
    try:
        airflow.prepare()
        airflow.start()
        env = airflow.env()
        env.update(RTX_HEARTBEAT_INTERVAL="1", RTX_LOG_FORMAT="json")  # upkeep (rescue) every second
        stack.daemons.append(Daemon("allocator", [sys.executable, "-m", "allocator", "serve"], env, home))
        yield stack
    finally:
        for d in reversed(stack.daemons):
            if d.proc.poll() is None:
                d.stop(timeout=20)
        network.close()  # SIGKILLs whatever is left in the namespaces, deletes them and their links
        airflow.stop()
        drop_database(pg_admin_url, name)


@pytest.fixture
def hosts(multihost) -> Iterator[MultiHost]:
    """Each test makes its own hosts; its runners stop and its hosts go when it ends, failed or not."""
    try:
        yield multihost
    finally:
        for host in multihost.network.hosts.values():
            host.link_up()  # so a runner can drain and deregister
        multihost.stop_runners()
        multihost.network.close()


def read_trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def runs_by_try(trace: list[dict]) -> dict[tuple, dict]:
    """(task, map index, try) -> runner, number of starts, first start, last event, ended."""
    out: dict[tuple, dict] = {}
    for e in trace:
        key = (e["task"], e["map_index"], e["try"])
        r = out.setdefault(
            key, {"runner": e["runner"], "starts": 0, "first": e["t"], "last": e["t"], "ended": False}
        )
        r["starts"] += e["event"] == "start"
        r["ended"] |= e["event"] == "end"
        r["first"], r["last"] = min(r["first"], e["t"]), max(r["last"], e["t"])
        assert r["runner"] == e["runner"], f"one try on two runners: {key}"
    return out


def allocations(url: str, dag_id: str, run_id: str) -> list[tuple]:
    return query(
        url,
        "SELECT a.task_id, a.map_index, a.try_number, a.state, r.name FROM runtime_executor.allocations a"
        " LEFT JOIN runtime_executor.runners r ON r.id = a.runner_id"
        " WHERE a.dag_id = %(d)s AND a.run_id = %(r)s ORDER BY 1, 2, 3",
        {"d": dag_id, "r": run_id},
    )


@pytest.mark.skipif(EXAMPLE_DAG is None, reason="the example DAG rtx_example.py is not in this checkout")
def test_example_dag_runs_on_two_hosts_and_each_log_comes_from_its_host(hosts):
    alpha, beta = hosts.network.host("alpha"), hosts.network.host("beta")
    hosts.runner(alpha, "--slots", "8", "--cpu", "4", "--memory", "4096")
    hosts.runner(
        beta, "--slots", "8", "--cpu", "4", "--memory", "6144", "--queue", "default", "--queue", "heavy"
    )
    address = {hosts.runner_id("alpha"): alpha.address, hosts.runner_id("beta"): beta.address}

    run_id = hosts.trigger("rtx_example")
    assert hosts.wait("rtx_example", run_id) == "success"

    tis = hosts.api("GET", f"/api/v2/dags/rtx_example/dagRuns/{run_id}/taskInstances").json()[
        "task_instances"
    ]
    ran_on = dict(
        ((t, m), (r, a))
        for t, m, r, a in query(
            hosts.url,
            "SELECT task_id, map_index, runner_id::text, state FROM runtime_executor.allocations"
            " WHERE dag_id = 'rtx_example' AND run_id = %(r)s",
            {"r": run_id},
        )
    )
    assert len(tis) == 8 and {ti["state"] for ti in tis} == {"success"}
    seen = set()
    for ti in tis:
        runner, _ = ran_on[(ti["task_id"], ti["map_index"])]
        # the hostname Airflow recorded is the link address of the host that ran it
        assert ti["hostname"] == address[runner], ti
        seen.add(ti["hostname"])
        params = {"map_index": ti["map_index"]} if ti["map_index"] >= 0 else None
        response = hosts.api(
            "GET",
            f"/api/v2/dags/rtx_example/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/1",
            headers={"Accept": "application/json"},
            params=params,
        )
        response.raise_for_status()
        text = json.dumps(response.json())
        # fetched by the api-server from that host's log server, over the link
        assert f"http://{ti['hostname']}:{hosts.log_port}/log/dag_id=rtx_example/run_id={run_id}" in text, (
            text[:2000]
        )
        assert "Done. Returned value was" in text or "Command exited with return code 0" in text, text[-2000:]
    assert seen == {alpha.address, beta.address}
    assert ran_on[("train_model", -1)][0] == hosts.runner_id("beta")  # the heavy queue: beta only
    assert not (hosts.airflow.home / "logs" / "dag_id=rtx_example").exists()  # never on the api-server's disk


def test_a_host_cut_off_mid_task_is_fenced_retried_elsewhere_and_rejoins(hosts, tmp_path):
    gamma, delta = hosts.network.host("gamma"), hosts.network.host("delta")
    hosts.runner(gamma, "--slots", "2")
    gamma_id = hosts.runner_id("gamma")
    trace = tmp_path / "trace.jsonl"
    run_id = hosts.trigger("rtx_partition", trace)
    wait_for(
        lambda: any(e["event"] == "tick" for e in read_trace(trace)),
        timeout=90,
        interval=0.2,
        what="try 1 ticking",
    )
    hosts.runner(delta, "--slots", "2")  # the elsewhere, ready before the cut
    delta_id = hosts.runner_id("delta")
    time.sleep(1)

    gamma.link_down()
    cut_at = time.time()
    assert hosts.wait("rtx_partition", run_id, timeout=120) == "success"

    runs = runs_by_try(read_trace(trace))
    first, second = runs[("victim", -1, 1)], runs[("victim", -1, 2)]
    assert set(runs) == {("victim", -1, 1), ("victim", -1, 2)}  # retried once, no third try
    assert (first["runner"], second["runner"]) == (gamma_id, delta_id)
    assert first["starts"] == second["starts"] == 1 and not first["ended"] and second["ended"]
    lease_expired_at, lost_at = query(
        hosts.url,
        "SELECT extract(epoch FROM r.lease_expires_at)::float8,"
        " (SELECT extract(epoch FROM min(e.at))::float8 FROM runtime_executor.allocation_events e"
        "   WHERE e.allocation_id = a.id AND e.to_state = 'lost')"
        " FROM runtime_executor.allocations a JOIN runtime_executor.runners r ON r.id = a.runner_id"
        " WHERE a.dag_id = 'rtx_partition' AND a.run_id = %(r)s AND a.try_number = 1",
        {"r": run_id},
    )[0]
    print(
        f"cut at 0; try 1 last tick {first['last'] - cut_at:.2f}s, lease expired {lease_expired_at - cut_at:.2f}s,"
        f" lost {lost_at - cut_at:.2f}s, try 2 started {second['first'] - cut_at:.2f}s"
    )
    # fenced: try 1's last sign of life came before the database's lease ran out, and try 2 after it
    assert first["last"] + 0.5 < lease_expired_at <= lost_at < second["first"], (
        first,
        second,
        lease_expired_at,
    )
    assert first["last"] - cut_at < 8  # it did not outlive the lease it had when the link went
    assert (
        "could not renew its lease; stopping its tasks"
        in next(d for d in hosts.daemons if d.name == "gamma").log()
    )
    # the run is done when the task reports success; the runner records the process exit just after
    wait_for(
        lambda: (
            [r[2:] for r in allocations(hosts.url, "rtx_partition", run_id)]
            == [(1, "lost", "gamma"), (2, "succeeded", "delta")]
        ),
        timeout=15,
        what="try 1 lost on gamma, try 2 succeeded on delta",
    )
    ti = hosts.api("GET", f"/api/v2/dags/rtx_partition/dagRuns/{run_id}/taskInstances/victim").json()
    assert (ti["state"], ti["try_number"], ti["hostname"]) == ("success", 2, delta.address)

    gamma.link_up()
    back = time.monotonic()
    rejoined = wait_for(
        lambda: query(
            hosts.url,
            "SELECT id::text FROM runtime_executor.runners WHERE name = 'gamma' AND state = 'active'"
            " AND id <> %(old)s AND lease_expires_at > now()",
            {"old": gamma_id},
        ),
        timeout=90,
        interval=0.5,
        what="gamma to register again",
    )
    print(f"gamma rejoined as {rejoined[0][0]} {time.monotonic() - back:.1f}s after its link came back")
    assert query(
        hosts.url, "SELECT state FROM runtime_executor.runners WHERE id = %(i)s", {"i": gamma_id}
    ) == [("lost",)]


def test_a_flapping_link_loses_nothing_and_duplicates_nothing(hosts, tmp_path):
    eps, zeta = hosts.network.host("eps"), hosts.network.host("zeta")
    lease = ("--lease-timeout", "12")  # longer than any one outage below (2 s plus TCP's retransmit)
    hosts.runner(eps, "--slots", "2", *lease)
    hosts.runner(zeta, "--slots", "2", *lease)
    ids = {hosts.runner_id("eps"), hosts.runner_id("zeta")}
    trace = tmp_path / "trace.jsonl"
    run_id = hosts.trigger("rtx_flap", trace)
    wait_for(lambda: read_trace(trace), timeout=90, interval=0.2, what="the first task to start")

    outages: list[tuple[float, float]] = []
    stop = threading.Event()

    def flap(host: netns.Host, offset: float) -> None:
        stop.wait(offset)
        while not stop.is_set():
            host.link_down()
            down = time.time()
            stop.wait(2)
            host.link_up()
            outages.append((down, time.time()))
            stop.wait(3)

    flappers = [threading.Thread(target=flap, args=(h, o), daemon=True) for h, o in ((eps, 0), (zeta, 2.5))]
    for t in flappers:
        t.start()
    try:
        time.sleep(60)
    finally:
        stop.set()
        for t in flappers:
            t.join(10)
        eps.link_up()
        zeta.link_up()
    assert hosts.wait("rtx_flap", run_id, timeout=120) == "success"

    runs = runs_by_try(read_trace(trace))
    assert sorted(k[1] for k in runs) == list(range(12))  # every mapped task, each once, on its first try
    assert all(k[2] == 1 and r["starts"] == 1 and r["ended"] for k, r in runs.items()), runs
    assert {r["runner"] for r in runs.values()} <= ids
    wait_for(
        lambda: {r[3] for r in allocations(hosts.url, "rtx_flap", run_id)} == {"succeeded"},
        timeout=15,
        what="every allocation succeeded",
    )
    # the flapping hit running tasks (the trace spans many outages), and no runner lost its lease
    assert sum(1 for d, u in outages if any(r["first"] < d and u < r["last"] for r in runs.values())) >= 10
    assert query(
        hosts.url,
        "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM runtime_executor.runners"
        " WHERE name IN ('eps', 'zeta')",
    ) == [(2, 2)]


def test_a_host_whose_clock_is_far_off_keeps_its_lease(hosts, tmp_path):
    library = netns.faketime_library()
    if library is None:
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    skews = {"clock_ahead": 86400.0, "clock_behind": -86400.0}
    ids = {}
    for queue, skew in skews.items():
        host = hosts.network.host(queue.replace("_", "-"))
        hosts.runner(
            host,
            "--slots",
            "1",
            "--queue",
            queue,
            serve_logs=False,
            LD_PRELOAD=str(library),
            FAKETIME=f"{skew:+.0f}",
            FAKETIME_DONT_FAKE_MONOTONIC="1",  # a wrong wall clock; the host's monotonic clock is fine
            PYTHONPATH=os.pathsep.join(
                [str(FAKETIME_SITE), str(REPO)]
            ),  # time.sleep around a libfaketime bug
        )
        ids[queue] = hosts.runner_id(host.name)
    trace = tmp_path / "trace.jsonl"
    run_id = hosts.trigger("rtx_clock", trace)

    remaining: list[float] = []  # what the database says is left of each lease, sampled during the run

    def finished() -> bool:
        states = [r[3] for r in allocations(hosts.url, "rtx_clock", run_id)]
        return len(states) == 2 and set(states) <= {"succeeded", "failed", "lost"}

    deadline = time.monotonic() + 150
    while not finished() and time.monotonic() < deadline:
        remaining += [
            r[0]
            for r in query(
                hosts.url,
                # clock_timestamp(), not now(): a renewal that commits between this statement's
                # start (now()) and its snapshot would read as more than a lease ahead
                "SELECT extract(epoch FROM lease_expires_at - clock_timestamp())::float8"
                " FROM runtime_executor.runners"
                " WHERE id = ANY(%(ids)s::uuid[])",
                {"ids": list(ids.values())},
            )
        ]
        time.sleep(0.5)
    state = hosts.wait("rtx_clock", run_id, timeout=30)
    if state != "success":
        for queue in skews:
            print(queue, hosts.airflow.task_log("rtx_clock", run_id, queue)[-3000:])
        print(hosts.logs())
    assert state == "success"

    runs = runs_by_try(read_trace(trace))
    for queue, skew in skews.items():
        run = runs[(queue, -1, 1)]
        assert run["runner"] == ids[queue] and run["starts"] == 1 and run["ended"]
        # the task ran under the host's clock: its own timestamps are a day off the database's
        assert abs(run["first"] - time.time() - skew) < 120, (queue, run)
    # leases on the database clock: always ahead of now by at most the lease, never expired
    assert len(remaining) > 20 and all(0 < r <= 8 for r in remaining), sorted(remaining)[:5]
    assert query(
        hosts.url,
        "SELECT count(*) FROM runtime_executor.runners WHERE id = ANY(%(ids)s::uuid[]) AND state = 'active'",
        {"ids": list(ids.values())},
    ) == [(2,)]
