"""Runner hosts of their own for tests: one Linux network namespace per host, one veth link each.

Layout (root only; ``ip`` from iproute2)::

    this host                                        namespace rtxnet-<pid>-<i> ("host" i)
    127.0.0.1:5432 Postgres  <-- TcpProxy --+
    127.0.0.1:<api> api-server <- TcpProxy -+-- 169.254.<o>.<4i+1>/30 ==veth== 169.254.<o>.<4i+2>/30 eth0
    api-server --------------------------- (log fetch) ------------------------->  runner's log server

A host sees nothing but its link: the namespace has ``lo`` and ``eth0`` and no default route, so
Postgres and the api-server (both on 127.0.0.1 here) are reached only through the per-host proxies
listening on the host side of the link (``Host.forward``). Every address is link-local
(169.254.0.0/16, third octet from our pid, never 169.254.169.x) and exists only while the namespace
does; nothing else is ever contacted.

Faults: ``link_down()`` takes the host side of the veth down, so the peer loses carrier and
packets vanish without an error or a reset (a pulled cable); ``link_up()`` restores it.

Clean-up: ``Network.close()`` SIGKILLs every process left in each namespace, deletes the
namespaces (which deletes the veth pairs) and closes the proxies; the fixtures call it in their
finalizers, so it runs when a test fails too. ``sweep_stale()`` removes namespaces of our prefix
left by a process that no longer runs (a test run killed before its finalizers).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from testing.proxy import TcpProxy

PREFIX = "rtxnet"
VETH_PREFIX = "rtxv"  # host-side interface names: rtxv<pid>x<i>, at most 15 characters
MAX_HOSTS = 60


def available() -> str | None:
    """Why the harness cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.strip()}"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace(netns: str) -> None:
    pids = _ip("netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", netns, check=False)


def sweep_stale() -> list[str]:
    """Delete namespaces named ``rtxnet-<pid>-<i>`` whose creating process has gone; returns them."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == PREFIX and parts[1].isdigit() and not _alive(int(parts[1])):
            _kill_namespace(name)
            removed.append(name)
    return removed


class Host:
    """A runner host: its namespace, its link, and the proxies that carry its traffic."""

    def __init__(self, name: str, index: int, octet: int) -> None:
        self.name = name
        self.netns = f"{PREFIX}-{os.getpid()}-{index}"
        self.veth = f"{VETH_PREFIX}{os.getpid()}x{index}"
        self.gateway = f"169.254.{octet}.{4 * index + 1}"  # this host's side of the link
        self.address = f"169.254.{octet}.{4 * index + 2}"  # the runner host's own address
        self.proxies: list[TcpProxy] = []

    def create(self) -> None:
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        _ip("addr", "add", f"{self.gateway}/30", "dev", self.veth)
        _ip("link", "set", self.veth, "up")
        _ip("-n", self.netns, "addr", "add", f"{self.address}/30", "dev", "eth0")
        _ip("-n", self.netns, "link", "set", "eth0", "up")
        _ip("-n", self.netns, "link", "set", "lo", "up")

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout)

    def forward(self, target_host: str, target_port: int, **proxy_options) -> TcpProxy:
        """A listener on this host's side of the link that carries connections to ``target``."""
        proxy = TcpProxy(target_host, target_port, bind=self.gateway, **proxy_options)
        self.proxies.append(proxy)
        return proxy

    def link_down(self) -> None:
        _ip("link", "set", self.veth, "down")

    def link_up(self) -> None:
        _ip("link", "set", self.veth, "up")

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.netns, check=False).stdout.split()]

    def destroy(self) -> None:
        for proxy in self.proxies:
            proxy.close()
        self.proxies.clear()
        _kill_namespace(self.netns)


class Network:
    """The runner hosts of one test run; ``close()`` removes every one of them."""

    def __init__(self) -> None:
        sweep_stale()
        self.octet = 10 + os.getpid() % 150  # 169.254.10-159.x: several test runs side by side
        self.hosts: dict[str, Host] = {}
        self._next = 0

    def host(self, name: str) -> Host:
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists already")
        if self._next >= MAX_HOSTS:
            raise ValueError(f"at most {MAX_HOSTS} hosts per network")
        host = Host(name, self._next, self.octet)
        self._next += 1
        taken = _ip("-4", "-o", "addr", "show").stdout
        if f" {host.gateway}/" in taken:
            raise RuntimeError(f"{host.gateway} is in use on this host already; not creating {host.netns}")
        self.hosts[name] = host
        try:
            host.create()
        except BaseException:
            host.destroy()
            raise
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            host.destroy()
        self.hosts.clear()


def faketime_library() -> Path | None:
    """libfaketime (Debian package ``faketime``), for a host whose clock is off; None if missing."""
    for candidate in (
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ):
        if Path(candidate).is_file():
            return Path(candidate)
    return None
