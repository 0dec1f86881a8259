-- Rescue, step 2: the sweep. Every allocation still assigned or running on a runner that is not
-- live -- lost (lease expired), stopped (it deregistered with work still on it: outcomes not
-- flushed before its drain deadline, a process that would not die) once its last lease ran out,
-- or gone -- goes back to 'unassigned' if it never started, or becomes 'lost' (terminal, reported
-- failed) if it had started. A stopped runner's rows wait for its lease, as a lost runner's do:
-- the database declares nothing about a task before the lease under which it ran has expired.
-- Invariant: no allocation stays non-terminal on a runner that is not live. This sweeps every such
-- runner, not only those step 1 just marked, so work that landed while a rescue ran (a placement
-- that committed after it, a start that was uncommitted when it read) is caught by the next pass.
-- A lost or stopped runner never becomes live again (heartbeat_runner and set_runner_state never revive one),
-- so what this reads as not live stays so. Rows someone holds locked (a start in flight) are
-- skipped (SKIP LOCKED) and swept by a later pass: rescue never waits. Each update is guarded by
-- the state and runner it comes from.
WITH stranded AS (
    SELECT a.id, a.state, a.runner_id, r.name AS runner_name, r.state AS runner_state
      FROM {schema}.allocations AS a
      LEFT JOIN {schema}.runners AS r ON r.id = a.runner_id
     WHERE a.state IN ('assigned', 'running')
       AND (r.id IS NULL OR r.state = 'lost' OR (r.state = 'stopped' AND r.lease_expires_at < clock_timestamp()))
       FOR UPDATE OF a SKIP LOCKED
), returned AS (
    UPDATE {schema}.allocations AS a
       SET state = 'unassigned', runner_id = NULL, assigned_at = NULL
      FROM stranded AS s
     WHERE a.id = s.id AND a.runner_id = s.runner_id AND a.state = 'assigned'
    RETURNING a.id, s.runner_name, 'returned' AS outcome
), lost AS (
    UPDATE {schema}.allocations AS a
       SET state = 'lost', finished_at = clock_timestamp(), workload = NULL,
           reason = CASE WHEN s.runner_name IS NULL THEN 'its runner (' || a.runner_id || ') is gone'
                         WHEN s.runner_state = 'stopped'
                         THEN 'runner ' || s.runner_name || ' (' || a.runner_id || ') stopped while the task was running'
                         ELSE 'runner ' || s.runner_name || ' (' || a.runner_id || ') stopped heartbeating; its lease expired'
                    END
      FROM stranded AS s
     WHERE a.id = s.id AND a.runner_id = s.runner_id AND a.state = 'running'
    RETURNING a.id, s.runner_name, 'lost' AS outcome
)
SELECT id, runner_name, outcome FROM returned
UNION ALL SELECT id, runner_name, outcome FROM lost
