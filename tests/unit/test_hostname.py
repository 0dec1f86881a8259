"""runtime_executor.hostname.route_address: the source address toward the Execution API server."""

from __future__ import annotations

import pytest

from runtime_executor.hostname import route_address


def test_route_address_is_the_source_address_toward_the_api_server(monkeypatch):
    assert route_address("http://127.0.0.1:8080/execution/") == "127.0.0.1"
    assert route_address("http://127.0.0.2:8080/execution/") == "127.0.0.1"  # lo's address is the source
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://127.0.0.1:9999/execution/")
    assert route_address() == "127.0.0.1"


def test_a_url_without_a_host_is_refused_with_the_url():
    with pytest.raises(ValueError, match="'/execution/' names no host"):
        route_address("/execution/")
