"""A ``[core] hostname_callable`` for runner hosts whose names the api-server cannot resolve.

Airflow records what ``hostname_callable`` returns as ``ti.hostname``, and the api-server fetches a
task's log from ``http://<ti.hostname>:<[logging] worker_log_server_port>/log/...``. The default
(the host's FQDN) works only where every runner host's name resolves, to the right address, on the
api-server's host. ``route_address`` needs no DNS and no /etc/hosts: it returns this host's own
address on the route to the Execution API server, the address the api-server sees the task's calls
come from, so the api-server can reach it back (not through NAT or a proxy that rewrites sources).

    AIRFLOW__CORE__HOSTNAME_CALLABLE=runtime_executor.hostname.route_address

It runs in the task process (Airflow is there); importing this module does not import Airflow.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

URL_VARIABLE = "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"


def _execution_api_url() -> str:
    url = os.environ.get(URL_VARIABLE)
    if url:
        return url
    from airflow.configuration import conf  # only when the environment does not say

    return conf.get("core", "execution_api_server_url")


def route_address(url: str | None = None) -> str:
    """This host's source address toward the host of ``url`` (default: the Execution API server).

    A UDP ``connect`` only asks the kernel for a route: no packet is sent.
    """
    target = urlsplit(url or _execution_api_url())
    if not target.hostname:
        raise ValueError(f"execution API server URL {url or _execution_api_url()!r} names no host")
    family, _, _, _, address = socket.getaddrinfo(target.hostname, target.port or 80, type=socket.SOCK_DGRAM)[
        0
    ]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(address)
        return probe.getsockname()[0]
