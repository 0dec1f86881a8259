"""The multi-host harness itself (testing/netns.py): isolation, the link, and clean-up."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from testing import netns

pytestmark = pytest.mark.skipif(
    netns.available() is not None, reason=f"multi-host harness: {netns.available()}"
)

CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()"


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_a_host_reaches_only_its_link_and_leaves_nothing_behind(pg_admin_url):
    network = netns.Network()
    try:
        host = network.host("solo")
        assert host.address.startswith("169.254.") and not host.address.startswith("169.254.169.")
        pg = host.forward("127.0.0.1", 5432)
        assert host.run([sys.executable, "-c", CONNECT, host.gateway, str(pg.port)]).returncode == 0
        # this host's own services are not there: 127.0.0.1 in the namespace is the namespace's
        assert host.run([sys.executable, "-c", CONNECT, "127.0.0.1", "5432"]).returncode != 0
        host.link_down()
        started = time.monotonic()
        assert host.run([sys.executable, "-c", CONNECT, host.gateway, str(pg.port)]).returncode != 0
        assert time.monotonic() - started >= 1.5  # silence (a timeout), not a refusal: a pulled cable
        host.link_up()
        assert host.run([sys.executable, "-c", CONNECT, host.gateway, str(pg.port)]).returncode == 0
        sleeper = subprocess.Popen(host.command(["sleep", "600"]))
        wait = time.monotonic() + 10
        while sleeper.pid not in host.pids() and time.monotonic() < wait:
            time.sleep(0.05)
        assert sleeper.pid in host.pids()
    finally:
        network.close()
    assert host.netns not in namespaces()
    assert sleeper.wait(10) == -9  # killed with its namespace
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert host.veth not in links


def test_namespaces_of_a_run_that_died_are_swept():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netns.PREFIX}-{dead.pid}-0"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in netns.sweep_stale()
        assert stale not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
