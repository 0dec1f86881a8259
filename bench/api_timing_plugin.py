"""An Airflow plugin for ``make bench-airflow``: times every request the api-server answers.

A pure ASGI root middleware (``fastapi_root_middlewares``) appends one line per request,
``<start unix time> <seconds> <status> <path>``, to ``$RTX_BENCH_API_LOG.<pid>``. The time is
measured inside the api-server's event loop, so it includes the wait for a busy loop but not the
wait in the listen queue. Copied into the benchmark deployment's plugins folder; never installed.
"""

from __future__ import annotations

import os
import time

from airflow.plugins_manager import AirflowPlugin


class RequestTiming:
    def __init__(self, app) -> None:
        self.app = app
        self._file = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.time()
        status = 0

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if self._file is None:
                self._file = open(f"{os.environ['RTX_BENCH_API_LOG']}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115
            self._file.write(f"{started:.6f} {time.time() - started:.6f} {status} {scope.get('path', '')}\n")


class BenchTimingPlugin(AirflowPlugin):
    name = "rtx_bench_api_timing"
    fastapi_root_middlewares = [
        {"middleware": RequestTiming, "args": [], "kwargs": {}, "name": "rtx bench timing"}
    ]
