"""The NOTIFY channels of a schema (sent by the triggers of migrations 0001 and 0004).

* ``allocator_channel``: new work, freed capacity, a runner that joined or left: every allocator.
* ``runner_channel``: work, a cancel or a state change (drain, resume, lost) for one runner. Each
  runner listens on its own, so a NOTIFY wakes only the runner it is for (docs/scaling.md).
"""

from __future__ import annotations

import hashlib

IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: longer channel names are refused by pg_notify


def allocator_channel(schema: str) -> str:
    return f"{schema}.allocator"


def runner_channel(schema: str, runner_id: str) -> str:
    """The same name as the SQL function ``<schema>.runner_channel(schema, id)`` (migration 0004)."""
    name = f"{schema}.runner.{runner_id}"
    if len(name.encode()) <= IDENTIFIER_BYTES:
        return name
    return "rtx.runner." + hashlib.md5(f"{schema}.{runner_id}".encode()).hexdigest()  # noqa: S324 - a name, not a secret
