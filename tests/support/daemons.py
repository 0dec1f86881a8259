"""Daemon helpers for tests (they live in ``runtime_executor.testing.daemons``, shared with bench/)."""

from runtime_executor.testing.daemons import FAKE_TASK, REPO, Daemon, Daemons, daemon_env, query, wait_for

__all__ = ["FAKE_TASK", "REPO", "Daemon", "Daemons", "daemon_env", "query", "wait_for"]
