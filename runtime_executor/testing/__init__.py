"""Helpers for rtx's own tests, benchmarks and ``make demo``: a throwaway Postgres cluster and a
real Airflow stack. Not used by the executor, the allocator or the runner at run time."""
