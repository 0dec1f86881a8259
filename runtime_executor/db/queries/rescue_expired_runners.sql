-- Runners whose lease expired become 'lost'. What they had been assigned but not started goes back
-- to 'unassigned' (it never ran); what they had started becomes 'lost' (terminal, reported failed).
-- One statement, one transaction; each allocation update is guarded by the runner and state it comes from.
WITH dead AS (
    UPDATE {schema}.runners
       SET state = 'lost', stopped_at = clock_timestamp()
     WHERE state IN ('active', 'draining') AND lease_expires_at < clock_timestamp()
    RETURNING id, name
), returned AS (
    UPDATE {schema}.allocations AS a
       SET state = 'unassigned', runner_id = NULL, assigned_at = NULL
      FROM dead
     WHERE a.runner_id = dead.id AND a.state = 'assigned'
    RETURNING a.id, dead.name AS runner_name, 'returned' AS outcome
), lost AS (
    UPDATE {schema}.allocations AS a
       SET state = 'lost', finished_at = clock_timestamp(), workload = NULL,
           reason = 'runner ' || dead.name || ' (' || dead.id || ') stopped heartbeating; its lease expired'
      FROM dead
     WHERE a.runner_id = dead.id AND a.state = 'running'
    RETURNING a.id, dead.name AS runner_name, 'lost' AS outcome
)
SELECT NULL::uuid AS id, name AS runner_name, 'runner' AS outcome FROM dead
UNION ALL SELECT id, runner_name, outcome FROM returned
UNION ALL SELECT id, runner_name, outcome FROM lost
