"""Daemon helpers for tests (they live in ``testing.daemons``, shared with bench/)."""

from testing.daemons import FAKE_TASK, REPO, Daemon, Daemons, daemon_env, query, wait_for

__all__ = ["FAKE_TASK", "REPO", "Daemon", "Daemons", "daemon_env", "query", "wait_for"]
