-- assigned -> running for everything assigned to this runner, in one statement (one transaction),
-- guarded by owner and state: a rescued, reassigned or cancelled row is not started.
-- Invariant: nothing starts on a runner that is not live: its row must be active or draining with
-- its lease unexpired on the database clock. (A rescue that commits while this statement's start
-- is uncommitted is caught by rescue's next sweep: rescue_stranded_allocations.)
UPDATE {schema}.allocations
   SET state = 'running', started_at = clock_timestamp()
 WHERE runner_id = %(runner_id)s AND state = 'assigned' AND NOT cancel_requested
   AND EXISTS (SELECT 1 FROM {schema}.runners AS r
                WHERE r.id = %(runner_id)s AND r.state IN ('active', 'draining')
                  AND r.lease_expires_at > clock_timestamp())
RETURNING id, kind, workload, dag_id, task_id, run_id, try_number, callback_id, memory_mb, priority_weight,
          queue, slots, cpu, extract(epoch FROM clock_timestamp() - created_at)::float8 AS age_s
