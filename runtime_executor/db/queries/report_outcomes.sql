-- The executor's exactly-once report: mark what changed as reported and return it, in one statement.
-- The scheduler gets each state once; a new executor re-reports only what it adopts.
UPDATE {schema}.allocations
   SET reported_state = state
 WHERE scheduler_job_id IS NOT DISTINCT FROM %(job_id)s
   AND reported_state IS DISTINCT FROM state
   AND state IN ('running', 'succeeded', 'failed', 'lost')
   AND NOT cancel_requested
RETURNING id, kind, dag_id, task_id, run_id, map_index, try_number, callback_id, state, reason, exit_code
