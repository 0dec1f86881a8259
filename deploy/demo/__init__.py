"""``make demo``: rtx and a real Airflow 3.3 on this machine, started in the background.

``python -m deploy.demo start`` starts PostgreSQL (embedded, or ``$RTX_DEMO_DATABASE_URL``), the
Airflow api-server, scheduler and dag-processor with rtx as their executor, an rtx allocator and
two runners, runs the example DAG ``rtx_example`` once and prints where everything is.
``python -m deploy.demo stop`` stops all of it again. See docs/demo.md.
"""
