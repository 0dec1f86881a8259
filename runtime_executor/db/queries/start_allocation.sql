-- assigned -> running, guarded by owner and state: a rescued or cancelled row is not started.
UPDATE {schema}.allocations
   SET state = 'running', started_at = clock_timestamp()
 WHERE id = %(id)s AND runner_id = %(runner_id)s AND state = 'assigned' AND NOT cancel_requested
RETURNING kind, workload, dag_id, task_id, run_id, try_number, callback_id, memory_mb
