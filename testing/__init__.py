"""Helpers for rtx's own tests, benchmarks and ``make demo``: a throwaway Postgres cluster, real daemon
processes, a TCP proxy, a real Airflow stack and simulated runners. They live in the checkout, beside
``tests/`` and ``bench/``, and are not shipped in the wheel (pyproject's ``packages.find`` includes only
``runtime_executor``, ``allocator`` and ``runner``); nothing the executor, the allocator or the runner runs
imports them."""
