-- assigned -> running for everything assigned to this runner, in one statement (one transaction),
-- guarded by owner and state: a rescued, reassigned or cancelled row is not started.
UPDATE {schema}.allocations
   SET state = 'running', started_at = clock_timestamp()
 WHERE runner_id = %(runner_id)s AND state = 'assigned' AND NOT cancel_requested
RETURNING id, kind, workload, dag_id, task_id, run_id, try_number, callback_id, memory_mb, priority_weight,
          queue, slots, cpu, extract(epoch FROM clock_timestamp() - created_at)::float8 AS age_s
