-- This transaction's commit does not wait for the WAL flush. Safe for placement passes only: an
-- assignment lost in a crash simply reverts to 'unassigned', and anything that depends on it (a
-- runner's synchronous start) flushes the WAL up to and including it first.
SET LOCAL synchronous_commit = off
